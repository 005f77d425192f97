//! The one I/O error type: what was being done, to which path, and why. Every module's
//! error enum wraps it, so every I/O failure names its path the same way.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct IoError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// For `.map_err(io_err("read", &path))?`.
pub fn io_err(
    action: &'static str,
    path: impl AsRef<Path>,
) -> impl FnOnce(std::io::Error) -> IoError {
    let path = path.as_ref().to_path_buf();
    move |source| IoError {
        action,
        path,
        source,
    }
}

/// The major and minor numbers of a device file's `rdev` (libc gives them as `u32` on
/// Linux and as `int` on FreeBSD).
#[allow(clippy::unnecessary_cast)]
pub(crate) fn device_numbers(rdev: u64) -> (u32, u32) {
    (libc::major(rdev) as u32, libc::minor(rdev) as u32)
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a path with a NUL byte"))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a statvfs to fill.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// A file written with holes where the data is zeros: disk images are mostly zeros, and a
/// hole costs neither a write nor a block. `finish` sets the length (a file ending in
/// zeros ends in a hole).
pub struct SparseWriter {
    file: fs_err::File,
    len: u64,
    /// Zeros not written yet: skipped by one seek before the next write.
    hole: u64,
}

impl SparseWriter {
    pub fn new(file: fs_err::File) -> SparseWriter {
        SparseWriter {
            file,
            len: 0,
            hole: 0,
        }
    }

    pub fn finish(self) -> std::io::Result<()> {
        self.file.set_len(self.len)
    }
}

/// Whether `buf` is all zeros: compared a page at a time with `memcmp`, which is vector
/// code, where a byte loop is not.
fn is_zeros(buf: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    buf.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

impl std::io::Write for SparseWriter {
    /// Each 4 KiB block of zeros (counted from where `buf` starts) is left a hole; the
    /// runs of other blocks are written.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        const BLOCK: usize = 4096;
        let mut data_from: Option<usize> = None;
        for (i, block) in buf.chunks(BLOCK).enumerate() {
            let at = i * BLOCK;
            match (is_zeros(block), data_from) {
                (true, Some(from)) => {
                    self.write_data(&buf[from..at])?;
                    data_from = None;
                    self.hole += block.len() as u64;
                }
                (true, None) => self.hole += block.len() as u64,
                (false, None) => data_from = Some(at),
                (false, Some(_)) => {}
            }
        }
        if let Some(from) = data_from {
            self.write_data(&buf[from..])?;
        }
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl SparseWriter {
    /// Writes `data` after the hole before it.
    fn write_data(&mut self, data: &[u8]) -> std::io::Result<()> {
        use std::io::{Seek, Write};
        if self.hole > 0 {
            self.file
                .seek(std::io::SeekFrom::Current(self.hole as i64))?;
            self.hole = 0;
        }
        self.file.write_all(data)
    }
}

/// Copies `from`'s data into `to` at byte `offset`, skipping its holes (found with
/// `SEEK_DATA`/`SEEK_HOLE`): a sparse ext4 image costs what it holds, not its size. `to`
/// must already be long enough, with zeros where the holes go. Where the file system
/// cannot find holes, everything is copied.
pub(crate) fn copy_data_at(from: &Path, to: &fs_err::File, offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    let source = fs_err::File::open(from)?;
    let len = source.metadata()?.len();
    let fd = source.as_raw_fd();
    let mut buf = vec![0u8; 1 << 20];
    let mut at: u64 = 0;
    while at < len {
        // SAFETY: lseek on an open descriptor.
        let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        let (data, hole) = if data < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENXIO) => break, // only a hole is left
                Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOTTY) => (at as i64, len as i64),
                _ => return Err(err),
            }
        } else {
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            if hole < 0 {
                return Err(std::io::Error::last_os_error());
            }
            (data, hole)
        };
        let (mut pos, end) = (data as u64, (hole as u64).min(len));
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            source.file().read_exact_at(&mut buf[..n], pos)?;
            to.file().write_all_at(&buf[..n], offset + pos)?;
            pos += n as u64;
        }
        at = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    #[test]
    fn data_is_copied_at_its_offset_and_holes_stay_holes() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        let file = std::fs::File::create(&from).unwrap();
        file.set_len(8 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"start", 0).unwrap();
        file.write_all_at(b"middle", 5 << 20).unwrap();
        file.write_all_at(b"end", (8 << 20) - 3).unwrap();
        let to_path = dir.path().join("to");
        let to = fs_err::File::create(&to_path).unwrap();
        to.set_len(9 << 20).unwrap();
        super::copy_data_at(&from, &to, 1 << 20).unwrap();
        let copied = std::fs::read(&to_path).unwrap();
        assert_eq!(&copied[1 << 20..], &std::fs::read(&from).unwrap()[..]);
        assert!(copied[..1 << 20].iter().all(|b| *b == 0));
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&to_path).unwrap());
        assert!(blocks * 512 < 4 << 20, "{blocks} blocks");
    }

    #[test]
    fn zeros_become_holes_and_the_bytes_stay_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut data = vec![0u8; 8 << 20];
        // One byte in a block every 256 KiB, and a run of data across two writes.
        for at in (0..data.len()).step_by(256 << 10) {
            data[at + 100] = 7;
        }
        data[(1 << 20) - 5..(1 << 20) + 5].fill(9);
        let mut writer = super::SparseWriter::new(fs_err::File::create(&path).unwrap());
        for chunk in data.chunks(1 << 20) {
            writer.write_all(chunk).unwrap();
        }
        writer.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).unwrap());
        assert!(
            blocks * 512 < 2 << 20,
            "{blocks} blocks for one non-zero MiB"
        );
    }
}
