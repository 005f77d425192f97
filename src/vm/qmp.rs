//! A client of QMP, qemu's JSON control protocol, on the unix socket `-qmp` opens: one
//! command at a time, its answer read past any asynchronous events.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Longest wait for one answer: qemu answers at once unless it is wedged.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// The longest line read from qemu (its answers are small).
const MAX_ANSWER: u64 = 1 << 20;

pub(crate) struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to the socket of a qemu that is starting (it creates the socket early
    /// in its start), waiting up to `within` for it, and enters command mode.
    pub(crate) fn connect(socket: &Path, within: Duration) -> Result<Qmp, String> {
        let deadline = Instant::now() + within;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("cannot reach {}: {e}", socket.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let lost = |e: std::io::Error| format!("its control socket failed: {e}");
        stream.set_read_timeout(Some(ANSWER_WITHIN)).map_err(lost)?;
        let writer = stream.try_clone().map_err(lost)?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!(
                "its control socket did not greet as QMP: {greeting}"
            ));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments`; its `return` value, or its error's description.
    pub(crate) fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let request = json!({ "execute": command, "arguments": arguments });
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| format!("`{command}` could not be sent: {e}"))?;
        loop {
            let answer = self.read()?;
            if let Some(value) = answer.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = answer.get("error") {
                let desc = error
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no description");
                return Err(format!("`{command}` failed: {desc}"));
            }
            // An event ({"event": ...}): not our answer.
        }
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let read = (&mut self.reader)
            .take(MAX_ANSWER)
            .read_line(&mut line)
            .map_err(|e| format!("no answer on its control socket: {e}"))?;
        if read == 0 {
            return Err("it closed its control socket (it exited)".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("an answer that is not JSON ({e}): {line}"))
    }
}
