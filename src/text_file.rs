//! Text files read so that a decoding error names the line, the column and what to do, and
//! one bad line of a data file can be skipped rather than sinking the whole file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// What a user can do about a file that is not UTF-8.
pub(crate) const SAVE_AS_UTF8: &str = "save the file as UTF-8";

/// The bytes of `path`, without a UTF-8 byte-order mark. A folder, a compressed file or
/// UTF-16 text is refused as such (their bytes would read as a first invalid byte).
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    if path.is_dir() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            error: std::io::Error::other("is a folder, where a text file was expected"),
        });
    }
    let mut bytes = read_once(path)?;
    if let Some(problem) = not_plain_text(&bytes) {
        return Err(Error::Format {
            path: path.to_path_buf(),
            detail: problem,
        });
    }
    if bytes.starts_with(b"\xef\xbb\xbf") {
        bytes.drain(..3);
    }
    Ok(bytes)
}

/// The bytes of the file at `path`, refusing a device other than a terminal: `/dev/zero` or
/// `/dev/urandom` (a link to one, made by mistake) never ends, and reading it would take all
/// the memory there is. A terminal (`/dev/stdin` typed into) ends where its user ends it.
pub(crate) fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path)?;
    let kind = metadata.file_type();
    // `/dev/null` ends at once (stdin of a job run without input): it reads as empty.
    let null = std::fs::metadata("/dev/null").is_ok_and(|n| n.rdev() == metadata.rdev());
    if !(kind.is_char_device() || kind.is_block_device()) || null {
        return std::fs::read(path);
    }
    let mut file = std::fs::File::open(path)?;
    // SAFETY: isatty only inspects the descriptor, which `file` keeps open.
    if unsafe { libc::isatty(file.as_raw_fd()) } != 1 {
        return Err(std::io::Error::other(
            "is a device, not a file (one such as /dev/zero would be read without end)",
        ));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The bytes of `path`. A pipe (a named FIFO, `/dev/stdin` on a pipe, a shell's `<(…)`) can
/// be read only once, yet a data file is read more than once (a training file for its classes,
/// then for its rows): what a pipe gave is kept for the process, by the pipe's identity, and
/// given again where a second read would find it empty. Any other file is read anew each time.
fn read_once(path: &Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    /// What each pipe gave, by (device, inode).
    type PipesRead = HashMap<(u64, u64), Vec<u8>>;
    static PIPES_READ: OnceLock<Mutex<PipesRead>> = OnceLock::new();
    let io_error = |error| Error::Io {
        path: path.to_path_buf(),
        error,
    };
    let metadata = std::fs::metadata(path).map_err(io_error)?;
    if !metadata.file_type().is_fifo() {
        return read_file(path).map_err(io_error);
    }
    // Device and inode name the pipe itself, whatever link (`/dev/stdin`, `/proc/self/fd/0`)
    // led to it; an anonymous pipe's inode number is not given again while the process lives.
    let key = (metadata.dev(), metadata.ino());
    let pipes = PIPES_READ.get_or_init(Default::default);
    // A poisoned lock only means another thread panicked holding it; the map is still whole.
    let mut pipes = pipes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(bytes) = pipes.get(&key) {
        return Ok(bytes.clone());
    }
    let bytes = std::fs::read(path).map_err(io_error)?;
    pipes.insert(key, bytes.clone());
    Ok(bytes)
}

/// What the first bytes of a file say it is, when that is not UTF-8 text: compressed (by
/// its magic number) or UTF-16 (by its byte-order mark).
fn not_plain_text(bytes: &[u8]) -> Option<String> {
    const COMPRESSED: [(&[u8], &str, &str); 5] = [
        (b"\x1f\x8b", "gzip", "gunzip"),
        (b"PK\x03\x04", "zip", "unzip"),
        (b"BZh", "bzip2", "bunzip2"),
        (b"\xfd7zXZ\x00", "xz", "unxz"),
        (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
    ];
    if let Some((_, format, tool)) = COMPRESSED.iter().find(|(magic, _, _)| {
        // `BZh` could begin a text file: bzip2's block size digit follows it.
        bytes.starts_with(magic)
            && (*magic != b"BZh"
                || bytes.get(3).is_some_and(|d| (b'1'..=b'9').contains(d))
                    && bytes.get(4) == Some(&0x31))
    }) {
        return Some(format!(
            "is {format}-compressed: decompress it first (e.g. `{tool}`); text files are read \
             as they are"
        ));
    }
    if bytes.starts_with(b"\xff\xfe") || bytes.starts_with(b"\xfe\xff") {
        return Some(format!(
            "is UTF-16 text (its byte-order mark says so): {SAVE_AS_UTF8}"
        ));
    }
    None
}

/// The whole of `path` as UTF-8 text (a byte-order mark dropped); an invalid byte is an
/// error naming its line and column.
pub(crate) fn read_utf8(path: &Path) -> Result<String> {
    let bytes = read_bytes(path)?;
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let at = e.utf8_error().valid_up_to();
        let line_start = bytes[..at]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::Format {
            path: path.to_path_buf(),
            detail: format!(
                "line {line}, byte {} of the line: {}",
                at - line_start + 1,
                invalid_utf8(bytes[at])
            ),
        }
    })
}

/// `bytes` split into numbered lines (1-based; `\r\n` or `\n`), each decoded on its own.
pub(crate) fn utf8_lines(
    bytes: &[u8],
) -> impl Iterator<Item = (usize, std::result::Result<&str, String>)> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(move |_| !bytes.is_empty())
        .map(|(i, line)| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let text = std::str::from_utf8(line).map_err(|e| {
                let at = e.valid_up_to();
                format!("byte {} of the line: {}", at + 1, invalid_utf8(line[at]))
            });
            (i + 1, text)
        })
}

/// The message for an invalid byte.
pub(crate) fn invalid_utf8(byte: u8) -> String {
    format!("0x{byte:02x} is not valid UTF-8 ({SAVE_AS_UTF8})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_byte_is_located_by_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        std::fs::write(&path, b"\xef\xbb\xbf{\n  \"a\": \"x\xffy\"\n}").unwrap();
        let e = read_utf8(&path).unwrap_err().to_string();
        assert!(e.contains("line 2, byte 10 of the line: 0xff"), "{e}");
        std::fs::write(&path, "é\n").unwrap();
        assert_eq!(read_utf8(&path).unwrap(), "é\n");
    }

    #[test]
    fn a_pipe_read_twice_gives_its_bytes_twice() {
        let mut ends = [0; 2];
        // SAFETY: `ends` has room for the two descriptors pipe() writes.
        assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
        let rows = b"text,label\nhi,1\n";
        // SAFETY: the write end is open and the rows fit in a pipe's buffer; it is closed
        // after, so a reader sees the end of the rows, as from `cat rows | spafit`.
        unsafe {
            assert_eq!(libc::write(ends[1], rows.as_ptr().cast(), rows.len()), 16);
            libc::close(ends[1]);
        }
        // What `/dev/stdin` is when standard input is a pipe.
        let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", ends[0]));
        let first = read_bytes(&path).unwrap();
        let second = read_bytes(&path).unwrap();
        // SAFETY: the read end is ours and no longer used.
        unsafe { libc::close(ends[0]) };
        assert_eq!(first, rows);
        assert_eq!(second, first);
    }

    #[test]
    fn lines_decode_one_by_one() {
        let lines: Vec<_> = utf8_lines(b"a\r\nb\xc3(\n\nc\n").collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], (1, Ok("a")));
        assert_eq!(lines[1].0, 2);
        assert!(lines[1]
            .1
            .as_ref()
            .unwrap_err()
            .contains("byte 2 of the line: 0xc3"));
        assert_eq!(lines[2], (3, Ok("")));
        assert_eq!(lines[3], (4, Ok("c")));
        assert_eq!(utf8_lines(b"").count(), 0);
    }
}
