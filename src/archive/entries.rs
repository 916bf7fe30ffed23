//! Reading a tar stream that arrives as chunks of bytes, without copying file contents: a file's
//! data is a slice of the chunk it lies in, copied only when it spans two chunks. Each slice says
//! which chunk it keeps alive, so that the unpacker can account for the memory it holds.
//!
//! It reads what the `tar` crate reads, the same way: headers with verified checksums, GNU long
//! names (`L`, `K`) and PAX records (`path`, `linkpath`, `size`) applied to the entry that follows
//! them, and the end at the first zero block or the end of the stream. Judging the entries is the
//! unpacker's job.

use std::io;

use bytes::{Buf, Bytes};

const BLOCK: u64 = 512;

/// GNU long names and PAX records larger than this are refused (paths are at most 4 KiB).
pub const MAX_EXTENSION: u64 = 64 * 1024;

/// The most bytes [`Entries::data`] reads whole.
pub const MAX_WHOLE: usize = 1024 * 1024;

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the archive ends in the middle of an entry",
    )
}

/// The bytes of a stream that arrives in chunks.
struct Chunks<I> {
    input: I,
    current: Bytes,
    /// Which chunk `current` is (counted from 1) and its whole length: what a slice of it keeps
    /// alive.
    id: u64,
    len: usize,
    /// Bytes taken from the stream so far.
    taken: u64,
}

/// A chunk of the stream: its number and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub id: u64,
    pub len: usize,
}

/// An entry's data: a slice of one chunk (which it keeps alive whole), or a copy.
pub struct Data {
    pub bytes: Bytes,
    pub chunk: Option<ChunkRef>,
}

impl<I: Iterator<Item = io::Result<Bytes>>> Chunks<I> {
    /// Makes `current` non-empty; false at the end of the stream.
    fn fill(&mut self) -> io::Result<bool> {
        while self.current.is_empty() {
            match self.input.next().transpose()? {
                Some(chunk) => {
                    self.id += 1;
                    self.len = chunk.len();
                    self.current = chunk;
                }
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Fills `block`; false if the stream ended before its first byte.
    fn read_block(&mut self, block: &mut [u8]) -> io::Result<bool> {
        let mut n = 0;
        while n < block.len() {
            if !self.fill()? {
                return if n == 0 { Ok(false) } else { Err(truncated()) };
            }
            let k = (block.len() - n).min(self.current.len());
            block[n..n + k].copy_from_slice(&self.current[..k]);
            self.current.advance(k);
            n += k;
        }
        self.taken += block.len() as u64;
        Ok(true)
    }

    /// The next `n` bytes, a slice of one chunk when they lie in one.
    fn take(&mut self, n: usize) -> io::Result<Data> {
        if n == 0 {
            return Ok(Data {
                bytes: Bytes::new(),
                chunk: None,
            });
        }
        if !self.fill()? {
            return Err(truncated());
        }
        self.taken += n as u64;
        if self.current.len() >= n {
            return Ok(Data {
                bytes: self.current.split_to(n),
                chunk: Some(ChunkRef {
                    id: self.id,
                    len: self.len,
                }),
            });
        }
        let mut joined = Vec::with_capacity(n);
        while joined.len() < n {
            if !self.fill()? {
                return Err(truncated());
            }
            let k = (n - joined.len()).min(self.current.len());
            joined.extend_from_slice(&self.current[..k]);
            self.current.advance(k);
        }
        Ok(Data {
            bytes: joined.into(),
            chunk: None,
        })
    }

    /// Hands the next `n` bytes to `f` piece by piece. The outer error is the stream's, the inner
    /// one `f`'s.
    fn pieces<E>(
        &mut self,
        mut n: u64,
        mut f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> io::Result<Result<(), E>> {
        while n > 0 {
            if !self.fill()? {
                return Err(truncated());
            }
            let k = n.min(self.current.len() as u64) as usize;
            if let Err(e) = f(&self.current[..k]) {
                return Ok(Err(e));
            }
            self.current.advance(k);
            self.taken += k as u64;
            n -= k as u64;
        }
        Ok(Ok(()))
    }
}

/// An entry's header with its GNU and PAX extensions applied.
pub struct RawEntry {
    pub header: tar::Header,
    pub kind: tar::EntryType,
    pub path: Vec<u8>,
    pub link: Option<Vec<u8>>,
    pub size: u64,
}

/// The entries of a tar stream. After [`Entries::next`], the entry's data is read with
/// [`Entries::data`] or [`Entries::data_pieces`], or skipped by the next call.
pub struct Entries<I> {
    chunks: Chunks<I>,
    /// Data of the current entry not read yet, and the padding after it.
    unread: u64,
    padding: u64,
    ended: bool,
}

impl<I: Iterator<Item = io::Result<Bytes>>> Entries<I> {
    pub fn new(input: I) -> Self {
        Self {
            chunks: Chunks {
                input,
                current: Bytes::new(),
                id: 0,
                len: 0,
                taken: 0,
            },
            unread: 0,
            padding: 0,
            ended: false,
        }
    }

    /// The next entry, or `None` at the archive's end.
    pub fn next_entry(&mut self) -> io::Result<Option<RawEntry>> {
        if self.ended {
            return Ok(None);
        }
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<u8>> = None;
        loop {
            // The rest of the previous entry (or extension header), and its padding.
            self.skip_unread()?;
            let mut block = [0u8; BLOCK as usize];
            let more = self.chunks.read_block(&mut block)?;
            if !more || block.iter().all(|b| *b == 0) {
                self.ended = true;
                if long_name.is_some() || long_link.is_some() || pax.is_some() {
                    return Err(invalid(
                        "members found describing a future member but no future member found",
                    ));
                }
                return Ok(None);
            }
            let header = tar::Header::from_byte_slice(&block).clone();
            verify_checksum(&header)?;
            let kind = header.entry_type();
            if kind.is_gnu_sparse() {
                // Its data is laid out differently (and may continue in further header blocks);
                // no snapshot writes one, and reading it as a plain entry would read the rest
                // of the stream otherwise than other readers do.
                return Err(invalid("a GNU sparse file (not supported)"));
            }
            let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
            let extension = recognized
                && (kind.is_gnu_longname()
                    || kind.is_gnu_longlink()
                    || kind.is_pax_local_extensions());
            let mut size = header.entry_size()?;
            if kind.is_pax_global_extensions() && size > MAX_EXTENSION {
                // Its data is skipped, but not for free: it is bounded like the others.
                return Err(invalid(format!(
                    "a PAX global header of {size} bytes (at most {MAX_EXTENSION})"
                )));
            }
            if !extension
                && !kind.is_pax_global_extensions()
                && let Some(pax_size) = pax.as_deref().and_then(|p| pax_value(p, b"size"))
            {
                size = parse_pax_size(pax_size)?;
            }
            self.unread = size;
            self.padding = size
                .checked_next_multiple_of(BLOCK)
                .ok_or_else(|| invalid(format!("an entry of {size} bytes")))?
                - size;
            if !extension {
                let path = match long_name {
                    Some(name) => without_trailing_nul(name),
                    None => match pax.as_deref().and_then(|p| pax_value(p, b"path")) {
                        Some(path) => path.to_vec(),
                        None => header.path_bytes().into_owned(),
                    },
                };
                let link = match long_link {
                    Some(link) => Some(without_trailing_nul(link)),
                    None => match pax.as_deref().and_then(|p| pax_value(p, b"linkpath")) {
                        Some(link) => Some(link.to_vec()),
                        None => header.link_name_bytes().map(|l| l.into_owned()),
                    },
                };
                return Ok(Some(RawEntry {
                    header,
                    kind,
                    path,
                    link,
                    size,
                }));
            }
            if size > MAX_EXTENSION {
                return Err(invalid(format!(
                    "a {kind:?} extension header of {size} bytes (at most {MAX_EXTENSION})"
                )));
            }
            let data = self.data()?.bytes.to_vec();
            let slot = if kind.is_gnu_longname() {
                &mut long_name
            } else if kind.is_gnu_longlink() {
                &mut long_link
            } else {
                &mut pax
            };
            if slot.replace(data).is_some() {
                return Err(invalid(format!(
                    "two {kind:?} extension headers describing the same member"
                )));
            }
        }
    }

    /// The current entry's data, whole: at most [`MAX_WHOLE`] bytes (larger entries are read
    /// with [`Entries::data_pieces`]), so that a header's size never decides an allocation.
    pub fn data(&mut self) -> io::Result<Data> {
        if self.unread > MAX_WHOLE as u64 {
            return Err(invalid(format!(
                "an entry of {} bytes read whole (at most {MAX_WHOLE})",
                self.unread
            )));
        }
        let n = self.unread as usize;
        let data = self.chunks.take(n)?;
        self.unread = 0;
        Ok(data)
    }

    /// The current entry's data, piece by piece (for large files). The outer error is the
    /// stream's, the inner one `f`'s.
    pub fn data_pieces<E>(
        &mut self,
        f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> io::Result<Result<(), E>> {
        let n = std::mem::take(&mut self.unread);
        let result = self.chunks.pieces(n, f);
        if !matches!(result, Ok(Ok(()))) {
            // Stopped part way: nothing more is read from this stream.
            self.ended = true;
        }
        result
    }

    /// Bytes of the tar stream read (or skipped) so far.
    pub fn position(&self) -> u64 {
        self.chunks.taken
    }

    /// After the end ([`Entries::next_entry`] gave `None`): reads the rest of the stream, which
    /// may only be zeros (the padding of a tar writer's last record: 10 KiB for GNU tar and
    /// bsdtar) and at most `max_trailer` bytes of them. Data after the end is what other readers
    /// (`tar -i`) would take for more entries; past the bound it is work for nothing.
    pub fn finish(&mut self, max_trailer: u64) -> io::Result<()> {
        let mut trailer = 0u64;
        while self.chunks.fill()? {
            let piece = std::mem::take(&mut self.chunks.current);
            trailer = trailer.saturating_add(piece.len() as u64);
            if trailer > max_trailer {
                return Err(invalid(format!(
                    "more than {max_trailer} bytes after the archive's end"
                )));
            }
            if piece.iter().any(|b| *b != 0) {
                return Err(invalid("data after the archive's end"));
            }
            self.chunks.taken += piece.len() as u64;
        }
        Ok(())
    }

    fn skip_unread(&mut self) -> io::Result<()> {
        let n = std::mem::take(&mut self.unread)
            .checked_add(std::mem::take(&mut self.padding))
            .ok_or_else(|| invalid("an entry larger than any archive"))?;
        self.chunks.pieces(n, |_| Ok::<(), ()>(()))?.ok();
        Ok(())
    }
}

fn verify_checksum(header: &tar::Header) -> io::Result<()> {
    let bytes = header.as_bytes();
    let sum = bytes[..148]
        .iter()
        .chain(&bytes[156..])
        .fold(0u32, |a, b| a + u32::from(*b))
        + 8 * 32;
    if header.cksum()? != sum {
        return Err(invalid("archive header checksum mismatch"));
    }
    Ok(())
}

fn without_trailing_nul(mut name: Vec<u8>) -> Vec<u8> {
    if name.last() == Some(&0) {
        name.pop();
    }
    name
}

/// The value of the first well-formed PAX record with this key (records: `<len> key=value\n`).
fn pax_value<'a>(records: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    tar::PaxExtensions::new(records)
        .filter_map(Result::ok)
        .find(|r| r.key_bytes() == key)
        .map(|r| r.value_bytes())
}

fn parse_pax_size(value: &[u8]) -> io::Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            invalid(format!(
                "PAX size {:?} is not a number",
                String::from_utf8_lossy(value)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        b.append_data(&mut dir, "d/", io::empty()).unwrap();
        for (i, size) in [0usize, 1, 511, 512, 513, 5000].into_iter().enumerate() {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000 + i as u64);
            h.set_size(size as u64);
            let data: Vec<u8> = (0..size).map(|k| (k * 7 + i) as u8).collect();
            // Names over 100 bytes become GNU long-name entries.
            let name = format!("d/{}{i}", "n".repeat(if i % 2 == 0 { 3 } else { 150 }));
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        b.append_link(&mut link, "d/link", "x".repeat(120)).unwrap();
        b.into_inner().unwrap()
    }

    /// What the `tar` crate reads: path, link, size and data per entry.
    type Read = (Vec<u8>, Option<Vec<u8>>, u64, Vec<u8>);

    fn with_tar_crate(bytes: &[u8]) -> Vec<Read> {
        let mut a = tar::Archive::new(bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path_bytes().into_owned();
                let link = e.link_name_bytes().map(|l| l.into_owned());
                let mut data = Vec::new();
                io::Read::read_to_end(&mut e, &mut data).unwrap();
                (path, link, e.size(), data)
            })
            .collect()
    }

    /// What the `tar` crate reads, up to its first error.
    fn with_tar_crate_until_error(bytes: &[u8]) -> io::Result<Vec<Read>> {
        let mut a = tar::Archive::new(bytes);
        let mut out = Vec::new();
        for e in a.entries()? {
            let mut e = e?;
            let path = e.path_bytes().into_owned();
            let link = e.link_name_bytes().map(|l| l.into_owned());
            let mut data = Vec::new();
            io::Read::read_to_end(&mut e, &mut data)?;
            out.push((path, link, e.size(), data));
        }
        Ok(out)
    }

    fn with_entries(bytes: &[u8], piece: usize) -> io::Result<Vec<Read>> {
        with_entries_cut(bytes, &[piece])
    }

    /// Reads `bytes` cut into chunks of the sizes in `cuts`, in turn.
    fn with_entries_cut(bytes: &[u8], cuts: &[usize]) -> io::Result<Vec<Read>> {
        let mut chunks: Vec<io::Result<Bytes>> = Vec::new();
        let mut rest = bytes;
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, after) = rest.split_at((*cut).clamp(1, rest.len()));
            chunks.push(Ok(Bytes::copy_from_slice(chunk)));
            rest = after;
        }
        let mut entries = Entries::new(chunks.into_iter());
        let mut out = Vec::new();
        while let Some(e) = entries.next_entry()? {
            let data = if e.size % 2 == 0 && e.size <= MAX_WHOLE as u64 {
                entries.data()?.bytes.to_vec()
            } else {
                let mut data = Vec::new();
                entries
                    .data_pieces(|p| {
                        data.extend_from_slice(p);
                        Ok::<(), ()>(())
                    })?
                    .unwrap();
                data
            };
            out.push((e.path, e.link, e.size, data));
        }
        Ok(out)
    }

    #[test]
    fn reads_what_the_tar_crate_reads_whatever_the_chunking() {
        let bytes = archive();
        let expected = with_tar_crate(&bytes);
        assert_eq!(expected.len(), 8);
        for piece in [1, 7, 511, 512, 513, 4096, bytes.len()] {
            assert_eq!(with_entries(&bytes, piece).unwrap(), expected, "{piece}");
        }
    }

    #[test]
    fn pax_records_override_path_and_size() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("path", b"from/pax".as_slice()), ("size", b"3")])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "from/header", &b"abc"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let read = with_entries(&bytes, 100).unwrap();
        assert_eq!(read, with_tar_crate(&bytes));
        assert_eq!(read[0].0, b"from/pax");
    }

    #[test]
    fn refuses_damage() {
        let mut bytes = archive();
        // A bad checksum.
        bytes[600] ^= 0xff;
        let e = with_entries(&bytes, 1000).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        // Cut in the middle of a file.
        let bytes = archive();
        let e = with_entries(&bytes[..512 * 4 + 100], 1000).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // A long name with nothing after it.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(4);
        b.append_data(&mut h, "././@LongLink", &b"abc\0"[..])
            .unwrap();
        let e = with_entries(&b.into_inner().unwrap(), 1000).unwrap_err();
        assert!(e.to_string().contains("no future member"), "{e}");
        // A sparse file, in a ustar header (which the tar crate refuses) or a GNU one (whose
        // layout differs).
        for mut h in [tar::Header::new_ustar(), tar::Header::new_gnu()] {
            h.set_entry_type(tar::EntryType::GNUSparse);
            h.set_size(0);
            h.set_mode(0o644);
            let mut b = tar::Builder::new(Vec::new());
            b.append_data(&mut h, "sparse", io::empty()).unwrap();
            let e = with_entries(&b.into_inner().unwrap(), 1000).unwrap_err();
            assert!(e.to_string().contains("sparse"), "{e}");
        }
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        /// An entry an honest writer makes: a file, a directory or a link, with names long
        /// enough for GNU long-name and long-link headers, or PAX records.
        #[derive(Debug, Clone)]
        enum Member {
            File(String, Vec<u8>),
            Dir(String),
            Symlink(String, String),
            Pax(String, Vec<u8>),
        }

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z]{1,12}(/[a-z]{1,12}){0,3}",
                "[a-z]{90,160}",
                "[a-z]{1,40}/[a-z]{60,130}",
            ]
        }

        fn member() -> impl Strategy<Value = Member> {
            prop_oneof![
                (name(), prop::collection::vec(any::<u8>(), 0..1500))
                    .prop_map(|(n, d)| Member::File(n, d)),
                name().prop_map(Member::Dir),
                (name(), name()).prop_map(|(n, t)| Member::Symlink(n, t)),
                (name(), prop::collection::vec(any::<u8>(), 0..700))
                    .prop_map(|(n, d)| Member::Pax(n, d)),
            ]
        }

        fn build(members: &[Member]) -> Vec<u8> {
            let mut b = tar::Builder::new(Vec::new());
            for m in members {
                let mut h = tar::Header::new_gnu();
                h.set_mode(0o644);
                h.set_size(0);
                match m {
                    Member::File(n, d) => {
                        h.set_size(d.len() as u64);
                        b.append_data(&mut h, n, &d[..]).unwrap()
                    }
                    Member::Dir(n) => {
                        h.set_entry_type(tar::EntryType::Directory);
                        b.append_data(&mut h, n, io::empty()).unwrap()
                    }
                    Member::Symlink(n, t) => {
                        h.set_entry_type(tar::EntryType::Symlink);
                        b.append_link(&mut h, n, t).unwrap()
                    }
                    Member::Pax(n, d) => {
                        b.append_pax_extensions([("path", n.as_bytes())]).unwrap();
                        let mut h = tar::Header::new_ustar();
                        h.set_mode(0o600);
                        h.set_size(d.len() as u64);
                        b.append_data(&mut h, "short", &d[..]).unwrap()
                    }
                }
            }
            b.into_inner().unwrap()
        }

        /// Where the headers of an honest archive are, extension headers included.
        fn header_offsets(bytes: &[u8]) -> Vec<usize> {
            let mut a = tar::Archive::new(bytes);
            a.entries()
                .unwrap()
                .raw(true)
                .map(|e| e.unwrap().raw_header_position() as usize)
                .collect()
        }

        proptest! {
            /// On honest archives, cut anywhere, the reader reads what the `tar` crate reads.
            #[test]
            fn reads_what_the_tar_crate_reads(
                members in prop::collection::vec(member(), 0..12),
                cuts in prop::collection::vec(1usize..1500, 1..8),
            ) {
                let bytes = build(&members);
                let theirs = with_tar_crate_until_error(&bytes).unwrap();
                prop_assert_eq!(with_entries_cut(&bytes, &cuts).unwrap(), theirs);
            }

            /// On damaged archives, it never panics; whatever it reads whole, the `tar` crate
            /// reads the same, and it refuses what the crate reads only on purpose (sparse
            /// files, oversized extensions): no parser differential for a hostile writer to
            /// use.
            #[test]
            fn agrees_with_the_tar_crate_on_damaged_bytes(
                members in prop::collection::vec(member(), 1..8),
                flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                in_headers in any::<bool>(),
                cut_at in prop::option::of(any::<prop::sample::Index>()),
                cuts in prop::collection::vec(1usize..1500, 1..8),
            ) {
                let mut bytes = build(&members);
                if in_headers {
                    // Damage in header fields, checksums made right again: what gets past the
                    // first check, as a hostile writer's bytes do.
                    let headers = header_offsets(&bytes);
                    for (at, xor) in &flips {
                        let h = headers[at.index(headers.len())];
                        let field = at.index(512 - 8);
                        let i = h + if field >= 148 { field + 8 } else { field };
                        bytes[i] ^= xor;
                        let mut header = tar::Header::from_byte_slice(&bytes[h..h + 512]).clone();
                        header.set_cksum();
                        bytes[h..h + 512].copy_from_slice(header.as_bytes());
                    }
                } else {
                    for (at, xor) in &flips {
                        let i = at.index(bytes.len());
                        bytes[i] ^= xor;
                    }
                }
                if let Some(at) = cut_at {
                    bytes.truncate(at.index(bytes.len()));
                }
                let ours = with_entries_cut(&bytes, &cuts);
                let theirs = with_tar_crate_until_error(&bytes);
                match (ours, theirs) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                    (Err(_), Err(_)) => {}
                    // What this reader refuses on purpose, and the tar crate reads.
                    (Err(e), Ok(_))
                        if ["sparse", "extension header of", "read whole"]
                            .iter()
                            .any(|why| e.to_string().contains(why)) => {}
                    (ours, theirs) => prop_assert!(
                        false,
                        "differential: ours {:?}, the tar crate's {:?}",
                        ours.map(|v| v.len()),
                        theirs.map(|v| v.len())
                    ),
                }
            }
        }
    }
}
