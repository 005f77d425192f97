//! A gzip-compressed `newc` cpio writer for initramfs images. Output is deterministic:
//! sorted paths, owner root:root, mtime 0, inode numbers by position; so the same tree
//! gives the same bytes. Device nodes can be added without being root (they are only
//! header data here), which is how `/dev/console` gets into an unprivileged build.

use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;
const S_IFIFO: u32 = 0o010000;

pub struct CpioWriter<W: Write> {
    out: GzEncoder<io::BufWriter<W>>,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> CpioWriter<W> {
        CpioWriter::with_level(out, Compression::default())
    }

    /// A writer that compresses little and fast: for archives made again for every test
    /// run or disk (the agent's, the kernel modules'), where time counts more than bytes.
    pub fn fast(out: W) -> CpioWriter<W> {
        CpioWriter::with_level(out, Compression::fast())
    }

    fn with_level(out: W, level: Compression) -> CpioWriter<W> {
        CpioWriter {
            out: GzEncoder::new(io::BufWriter::with_capacity(1 << 20, out), level),
            next_ino: 1,
        }
    }

    fn header(&mut self, name: &str, mode: u32, size: u32, rdev: (u32, u32)) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & 0o170000 == S_IFDIR { 2 } else { 1 };
        let namesize = name.len() + 1;
        write!(
            self.out,
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
            0, 0, 0, 0, 0, rdev.0, rdev.1, 0
        )?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + namesize)
    }

    fn pad(&mut self, len: usize) -> io::Result<()> {
        let pad = (4 - len % 4) % 4;
        self.out.write_all(&[0u8; 3][..pad])
    }

    /// Paths are written relative (no leading slash), as the kernel expects.
    fn clean(path: &str) -> &str {
        path.trim_start_matches('/')
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.header(Self::clean(path), S_IFDIR | (perm & 0o7777), 0, (0, 0))
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{path}: larger than 4 GiB")))?;
        self.header(Self::clean(path), S_IFREG | (perm & 0o7777), size, (0, 0))?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.header(
            Self::clean(path),
            S_IFLNK | 0o777,
            target.len() as u32,
            (0, 0),
        )?;
        self.out.write_all(target.as_bytes())?;
        self.pad(target.len())
    }

    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.header(
            Self::clean(path),
            S_IFCHR | (perm & 0o7777),
            0,
            (major, minor),
        )
    }

    /// Adds everything under `root`, sorted, placed under `prefix` in the archive.
    pub fn tree(&mut self, root: &Path, prefix: &str) -> io::Result<()> {
        let walker = walkdir::WalkDir::new(root)
            .min_depth(1)
            .follow_links(false)
            .sort_by_file_name();
        for entry in walker {
            let entry = entry.map_err(io::Error::other)?;
            let rel = entry
                .path()
                .strip_prefix(root)
                .unwrap_or(entry.path())
                .to_string_lossy();
            let name = format!("{}/{rel}", prefix.trim_end_matches('/'));
            let meta = entry.path().symlink_metadata()?;
            let perm = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            if ft.is_dir() {
                self.dir(&name, perm)?;
            } else if ft.is_symlink() {
                let target = fs_err::read_link(entry.path())?;
                self.symlink(&name, &target.to_string_lossy())?;
            } else if ft.is_file() {
                let data = fs_err::read(entry.path())?;
                self.file(&name, perm, &data)?;
            } else {
                let kind = if ft.is_char_device() {
                    S_IFCHR
                } else if ft.is_block_device() {
                    S_IFBLK
                } else if ft.is_fifo() {
                    S_IFIFO
                } else {
                    continue; // sockets have no place in an image
                };
                let rdev = meta.rdev();
                let devices = crate::fsio::device_numbers(rdev);
                self.header(Self::clean(&name), kind | perm, 0, devices)?;
            }
        }
        Ok(())
    }

    /// Writes the trailer and flushes; returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        let buf = self.out.finish()?;
        buf.into_inner().map_err(|e| e.into_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list_with_host_cpio(archive: &[u8]) -> Option<String> {
        let dir = tempfile::tempdir().ok()?;
        let gz = dir.path().join("a.cpio.gz");
        std::fs::write(&gz, archive).ok()?;
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("gzip -dc {} | cpio -it --quiet", gz.display()))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    #[test]
    fn same_tree_same_bytes_and_cpio_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/hello"), "#!/bin/sh\necho hi\n").unwrap();
        std::os::unix::fs::symlink("hello", dir.path().join("bin/hi")).unwrap();
        let build = || {
            let mut w = CpioWriter::new(Vec::new());
            w.tree(dir.path(), "/").unwrap();
            w.char_device("/dev/console", 0o600, 5, 1).unwrap();
            w.finish().unwrap()
        };
        let first = build();
        assert_eq!(first, build());
        if std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!(
                "skipping the cpio cross-check: cpio is not installed (apt-get install cpio)"
            );
            return;
        }
        let listing = list_with_host_cpio(&first).expect("cpio reads our archive");
        assert_eq!(
            listing.lines().collect::<Vec<_>>(),
            ["bin", "bin/hello", "bin/hi", "dev/console"]
        );
    }
}
