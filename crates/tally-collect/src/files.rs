//! Reading event files: NDJSON or a JSON array, plain, gzip or zstd.
//!
//! Files are streamed in chunks so that a file larger than memory imports in
//! bounded memory. Compression is recognised by the file's magic bytes, not
//! its name, so a mis-named file still reads.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::framing::split_lines;

/// A run of consecutive elements of a file.
#[derive(Debug)]
pub struct FileChunk {
    /// Index of the first element within the file.
    pub base_index: u64,
    /// The elements, each an exact slice of the (decompressed) file.
    pub elements: Vec<Bytes>,
}

/// A failure to read a file, or the chunk consumer's own error.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E: fmt::Display + fmt::Debug> {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file's JSON structure is broken at some element; everything
    /// before it was handed to the consumer.
    #[error(
        "{path}: malformed JSON after element {elements_read}: {message}. Fix the file and import it again: records already imported will count as duplicates"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Elements read before the error.
        elements_read: u64,
        /// What the parser said.
        message: String,
    },
    /// The consumer refused a chunk.
    #[error("{0}")]
    Sink(E),
}

struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Opens a file, undoing gzip or zstd compression when its magic bytes say
/// so. `bytes_read` counts bytes of the file on disk (compressed), which is
/// what a progress bar against the file size needs.
pub fn open(path: &Path, bytes_read: Arc<AtomicU64>) -> io::Result<Box<dyn BufRead + Send>> {
    let file = File::open(path)?;
    let mut raw = BufReader::with_capacity(
        1 << 20,
        CountingReader {
            inner: file,
            count: bytes_read,
        },
    );
    let magic = raw.fill_buf()?;
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::bufread::MultiGzDecoder::new(raw),
        ))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(BufReader::with_capacity(
            1 << 20,
            zstd::stream::read::Decoder::with_buffer(raw)?,
        ))
    } else {
        Box::new(raw)
    })
}

/// Streams a file's elements to `sink` in chunks of about `chunk_bytes`.
/// Returns the number of elements read.
pub fn read_chunks<E, F>(
    path: &Path,
    chunk_bytes: usize,
    bytes_read: Arc<AtomicU64>,
    mut sink: F,
) -> Result<u64, ReadError<E>>
where
    E: fmt::Display + fmt::Debug,
    F: FnMut(FileChunk) -> Result<(), E>,
{
    let io_err = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = open(path, bytes_read).map_err(io_err)?;
    let first = loop {
        let buf = reader.fill_buf().map_err(io_err)?;
        if buf.is_empty() {
            return Ok(0);
        }
        match buf.iter().position(|c| !c.is_ascii_whitespace()) {
            Some(i) => {
                let c = buf[i];
                reader.consume(i);
                break c;
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    if first == b'[' {
        read_array(path, reader, chunk_bytes, &mut sink)
    } else {
        read_ndjson(reader, chunk_bytes, &mut sink).map_err(|e| match e {
            ReadError::Io { source, .. } => io_err(source),
            other => other,
        })
    }
}

fn read_ndjson<E, F>(
    mut reader: Box<dyn BufRead + Send>,
    chunk_bytes: usize,
    sink: &mut F,
) -> Result<u64, ReadError<E>>
where
    E: fmt::Display + fmt::Debug,
    F: FnMut(FileChunk) -> Result<(), E>,
{
    let mut index = 0u64;
    let mut buf = BytesMut::with_capacity(chunk_bytes + (1 << 20));
    let mut eof = false;
    while !(eof && buf.is_empty()) {
        // Fill to the chunk size, then cut at the last newline.
        while buf.len() < chunk_bytes {
            let data = reader.fill_buf().map_err(|source| ReadError::Io {
                path: PathBuf::new(),
                source,
            })?;
            if data.is_empty() {
                eof = true;
                break;
            }
            let n = data.len();
            buf.extend_from_slice(data);
            reader.consume(n);
        }
        let window = buf.len().min(chunk_bytes);
        let newline = memchr::memrchr(b'\n', &buf[..window])
            .or_else(|| memchr::memchr(b'\n', &buf[window..]).map(|i| window + i));
        let cut = match newline {
            Some(i) => i + 1,
            None if eof => buf.len(),
            // A single line longer than the chunk: keep reading.
            None => continue,
        };
        let chunk = buf.split_to(cut).freeze();
        let elements = split_lines(&chunk);
        let n = elements.len() as u64;
        if n > 0 {
            sink(FileChunk {
                base_index: index,
                elements,
            })
            .map_err(ReadError::Sink)?;
        }
        index += n;
    }
    Ok(index)
}

fn read_array<E, F>(
    path: &Path,
    reader: Box<dyn BufRead + Send>,
    chunk_bytes: usize,
    sink: &mut F,
) -> Result<u64, ReadError<E>>
where
    E: fmt::Display + fmt::Debug,
    F: FnMut(FileChunk) -> Result<(), E>,
{
    struct Seed<'s, F, E> {
        sink: &'s mut F,
        chunk_bytes: usize,
        index: u64,
        sink_error: Option<E>,
    }
    impl<'de, F, E> Visitor<'de> for &mut Seed<'_, F, E>
    where
        F: FnMut(FileChunk) -> Result<(), E>,
    {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON array of events")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut elements = Vec::new();
            let mut size = 0;
            let mut base = self.index;
            loop {
                let raw = match seq.next_element::<Box<RawValue>>() {
                    Ok(Some(raw)) => raw,
                    Ok(None) => break,
                    Err(e) => {
                        // Hand over what was read before the break, so the
                        // caller stores it and can say how far it got.
                        if !elements.is_empty() {
                            let chunk = FileChunk {
                                base_index: base,
                                elements,
                            };
                            if let Err(se) = (self.sink)(chunk) {
                                self.sink_error = Some(se);
                            }
                        }
                        return Err(e);
                    }
                };
                let bytes = Bytes::from(raw.get().as_bytes().to_vec());
                size += bytes.len();
                elements.push(bytes);
                self.index += 1;
                if size >= self.chunk_bytes {
                    let chunk = FileChunk {
                        base_index: base,
                        elements: std::mem::take(&mut elements),
                    };
                    base = self.index;
                    size = 0;
                    if let Err(e) = (self.sink)(chunk) {
                        self.sink_error = Some(e);
                        return Err(serde::de::Error::custom("consumer stopped"));
                    }
                }
            }
            if !elements.is_empty()
                && let Err(e) = (self.sink)(FileChunk {
                    base_index: base,
                    elements,
                })
            {
                self.sink_error = Some(e);
                return Err(serde::de::Error::custom("consumer stopped"));
            }
            Ok(())
        }
    }
    impl<'de, F, E> DeserializeSeed<'de> for &mut Seed<'_, F, E>
    where
        F: FnMut(FileChunk) -> Result<(), E>,
    {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    // The reader is positioned at '['; serde_json reads the array from there.
    let mut seed = Seed {
        sink,
        chunk_bytes,
        index: 0,
        sink_error: None,
    };
    let mut de = serde_json::Deserializer::from_reader(reader);
    let result = (&mut seed).deserialize(&mut de).and_then(|_| de.end());
    if let Some(e) = seed.sink_error {
        return Err(ReadError::Sink(e));
    }
    result.map_err(|e| {
        if e.is_io() {
            ReadError::Io {
                path: path.to_path_buf(),
                source: io::Error::other(e.to_string()),
            }
        } else {
            ReadError::Malformed {
                path: path.to_path_buf(),
                elements_read: seed.index,
                message: e.to_string(),
            }
        }
    })?;
    Ok(seed.index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn collect(path: &Path, chunk: usize) -> Result<Vec<(u64, Vec<String>)>, ReadError<String>> {
        let mut out = Vec::new();
        read_chunks(
            path,
            chunk,
            Arc::default(),
            |c: FileChunk| -> Result<(), String> {
                out.push((
                    c.base_index,
                    c.elements
                        .iter()
                        .map(|e| String::from_utf8(e.to_vec()).unwrap())
                        .collect(),
                ));
                Ok(())
            },
        )?;
        Ok(out)
    }

    fn all(chunks: &[(u64, Vec<String>)]) -> Vec<String> {
        let mut expected_base = 0;
        let mut v = Vec::new();
        for (base, els) in chunks {
            assert_eq!(*base, expected_base);
            expected_base += els.len() as u64;
            v.extend(els.iter().cloned());
        }
        v
    }

    fn lines(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{{\"i\":{i},\"s\":\"x\\n]\"}}"))
            .collect()
    }

    #[test]
    fn ndjson_plain_gzip_and_zstd_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let text = lines(1000).join("\n") + "\n";
        let plain = dir.path().join("a.ndjson");
        std::fs::write(&plain, &text).unwrap();
        let gz = dir.path().join("a.ndjson.gz");
        let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), Default::default());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap();
        let zs = dir.path().join("a.ndjson.zst");
        std::fs::write(&zs, zstd::encode_all(text.as_bytes(), 3).unwrap()).unwrap();
        for p in [&plain, &gz, &zs] {
            let chunks = collect(p, 4096).unwrap();
            assert!(chunks.len() > 1, "small chunks split the file");
            assert_eq!(all(&chunks), lines(1000));
        }
    }

    #[test]
    fn arrays_stream_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        std::fs::write(&p, format!("  [{}]\n", lines(500).join(",\n"))).unwrap();
        let chunks = collect(&p, 2048).unwrap();
        assert!(chunks.len() > 1);
        assert_eq!(all(&chunks), lines(500));
    }

    #[test]
    fn broken_array_reports_how_far_it_got() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        std::fs::write(&p, "[{\"a\":1},{\"b\":2},{\"c\":").unwrap();
        match collect(&p, 1 << 20) {
            Err(ReadError::Malformed { elements_read, .. }) => assert_eq!(elements_read, 2),
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_has_no_elements() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.ndjson");
        std::fs::write(&p, "\n  \n").unwrap();
        assert!(collect(&p, 1024).unwrap().is_empty());
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = collect(Path::new("/nonexistent/x.ndjson"), 1024).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.ndjson"));
    }
}
