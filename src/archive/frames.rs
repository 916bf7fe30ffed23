//! The compression layer of `cache.tar.zst`: the tar stream cut into pieces of
//! [`FRAME_INPUT`] bytes, each compressed into an independent zstd frame that records its content
//! size and a checksum.
//!
//! Concatenated frames are one valid zstd stream (`zstd -dc` and any streaming decoder read them
//! as one), so this changes nothing for other readers. What it buys a restore: a frame whose size
//! is known is decompressed in one call straight into a buffer of that size, not through the
//! streaming decoder's window and an extra copy, and frames are compressed and decompressed on
//! several threads ([`super::pool`]) without zstd's multithreaded mode.
//!
//! The reader accepts any zstd stream, one frame at a time: archives written before frames were
//! cut (one frame with no content size), large frames and damaged data go to the streaming
//! decoder, which also gives the error, and the frames after them are taken one at a time again.
//! Frames with no content (empty or skippable) are bounded in number by the content.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::mpsc::Receiver;

use bytes::{Buf, Bytes, BytesMut};
use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

use super::Compression;
use super::pool::Pool;

/// Tar bytes per frame. 4 MiB costs about 2% in size over one frame on a Deno cache (zstd level
/// 3 looks back 2 MiB at most anyway) and bounds what a frame holds in memory.
pub const FRAME_INPUT: usize = 4 * 1024 * 1024;

/// A frame that declares more content than this is decoded as a stream, not in one call: at most
/// this much is allocated per frame, twice what the writer puts in one.
pub const MAX_ONE_SHOT: u64 = 2 * FRAME_INPUT as u64;

/// Compressed bytes gathered while looking for the end of a frame, at most (a frame of
/// [`MAX_ONE_SHOT`] bytes compresses to less, whatever the data); past this the rest is decoded
/// as a stream.
const MAX_GATHER: usize = MAX_ONE_SHOT as usize + 128 * 1024;

/// The largest window the streaming decoder accepts, as a power of two (16 MiB: the writer uses
/// 8 MiB at most at level 19): a frame header cannot make it allocate more.
pub const WINDOW_LOG_MAX: u32 = 24;

/// Decompressed bytes per chunk when decoding as a stream.
const STREAM_CHUNK: usize = 1024 * 1024;

fn zstd_error(what: &str, code: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what}: {}", zstd_safe::get_error_name(code)),
    )
}

type FrameResult = io::Result<(Vec<u8>, Vec<u8>)>;

/// Compresses what is written to it into independent frames, on `threads` threads, and writes
/// the frames to `inner` in order. Memory: at most `threads + 1` frames in flight, and `threads`
/// more queued.
pub struct FrameEncoder<W: Write> {
    /// `None` only once finished.
    inner: Option<W>,
    buf: Vec<u8>,
    pool: Pool<Vec<u8>, FrameResult>,
    in_flight: VecDeque<Receiver<FrameResult>>,
    spare: Vec<Vec<u8>>,
    max_in_flight: usize,
}

impl<W: Write> FrameEncoder<W> {
    pub fn new(inner: W, level: i32, threads: usize) -> io::Result<Self> {
        let threads = threads.max(1);
        let pool = Pool::new(threads, "zstd-compress", || {
            let mut cctx = CCtx::create();
            for param in [
                CParameter::CompressionLevel(level),
                CParameter::ChecksumFlag(true),
                CParameter::ContentSizeFlag(true),
            ] {
                cctx.set_parameter(param)
                    .map_err(|code| zstd_error("zstd parameters", code))?;
            }
            Ok(move |input: Vec<u8>| {
                let mut frame = Vec::with_capacity(zstd_safe::compress_bound(input.len()));
                match cctx.compress2(&mut frame, &input) {
                    Ok(_) => Ok((frame, input)),
                    Err(code) => Err(zstd_error("zstd compression", code)),
                }
            })
        })?;
        Ok(Self {
            inner: Some(inner),
            buf: Vec::with_capacity(FRAME_INPUT),
            pool,
            in_flight: VecDeque::new(),
            spare: Vec::new(),
            max_in_flight: threads + 1,
        })
    }

    /// Compresses what is buffered, writes every frame and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit()?;
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        Ok(self.inner.take().expect("finished once"))
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let next = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(FRAME_INPUT));
        let input = std::mem::replace(&mut self.buf, next);
        let result = self.pool.submit(input)?;
        self.in_flight.push_back(result);
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(result) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let (frame, mut input) = result
            .recv()
            .map_err(|_| io::Error::other("a zstd compression thread stopped"))??;
        self.inner_mut().write_all(&frame)?;
        input.clear();
        self.spare.push(input);
        Ok(())
    }

    fn inner_mut(&mut self) -> &mut W {
        self.inner.as_mut().expect("the encoder is not finished")
    }
}

impl<W: Write> Write for FrameEncoder<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(FRAME_INPUT - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == FRAME_INPUT {
            self.submit()?;
        }
        Ok(n)
    }

    /// Frames are cut by size, not by flushes; the inner writer is flushed.
    fn flush(&mut self) -> io::Result<()> {
        self.inner_mut().flush()
    }
}

/// A piece of the decompressed archive: decompressed already, or on its way from a decoding
/// thread. Taken in order with [`Piece::wait`], so the threads decode ahead of the reader.
pub enum Piece {
    Ready(io::Result<Bytes>),
    Decoding(Receiver<io::Result<Bytes>>),
}

impl Piece {
    pub fn wait(self) -> io::Result<Bytes> {
        match self {
            Piece::Ready(result) => result,
            Piece::Decoding(result) => result
                .recv()
                .map_err(|_| io::Error::other("a zstd decompression thread stopped"))?,
        }
    }
}

/// How to decompress.
#[derive(Clone, Copy, Debug)]
pub struct DecodeOptions {
    /// Threads decompressing frames that declare their size.
    pub threads: usize,
    /// Check each such frame's own checksum (XXH64, ~2% of a restore's CPU). Redundant when the
    /// whole archive's SHA-256 is checked: a damaged frame then fails the restore all the same,
    /// only at the end.
    pub frame_checksums: bool,
}

/// Frames with no content (empty or skippable) allowed beyond one per [`CONTENT_PER_EMPTY`]
/// bytes of content: each costs a call and a hand-off for nothing, and nine bytes make one.
/// The writer makes none; `pzstd` one skippable frame per frame of content.
const EMPTY_FRAMES_BASE: u64 = 16;
const CONTENT_PER_EMPTY: u64 = 64 * 1024;

/// Decompresses an archive that arrives as chunks, in order, handing the pieces to `emit` in
/// order (it returns false to stop). zstd frames are taken one at a time: those that declare
/// their size are decompressed in one call each, on `options.threads` threads; any other (a
/// frame without a size, or one too large, or damaged) on this thread as a stream, to its end.
/// gzip is decompressed as a stream (legacy archives).
pub fn decompress(
    compression: Compression,
    input: &mut dyn Iterator<Item = io::Result<Bytes>>,
    options: DecodeOptions,
    emit: &mut dyn FnMut(Piece) -> bool,
) -> io::Result<()> {
    match compression {
        Compression::Zstd => zstd_frames(input, options, emit),
        Compression::Gzip => gzip_stream(input, emit),
    }
}

fn gzip_stream(
    input: &mut dyn Iterator<Item = io::Result<Bytes>>,
    emit: &mut dyn FnMut(Piece) -> bool,
) -> io::Result<()> {
    let reader = ChunksRead {
        current: Bytes::new(),
        input,
    };
    let mut decoder = flate2::read::MultiGzDecoder::new(reader);
    loop {
        let mut buf = Vec::new();
        (&mut decoder)
            .take(STREAM_CHUNK as u64)
            .read_to_end(&mut buf)?;
        if buf.is_empty() {
            return Ok(());
        }
        if !emit(Piece::Ready(Ok(buf.into()))) {
            return Err(stopped());
        }
    }
}

fn stopped() -> io::Error {
    io::Error::other("extraction stopped")
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The zstd frames of the input, one at a time, until its end.
fn zstd_frames(
    input: &mut dyn Iterator<Item = io::Result<Bytes>>,
    options: DecodeOptions,
    emit: &mut dyn FnMut(Piece) -> bool,
) -> io::Result<()> {
    let new_dctx = || {
        let mut dctx = DCtx::create();
        for param in [
            DParameter::ForceIgnoreChecksum(!options.frame_checksums),
            DParameter::WindowLogMax(WINDOW_LOG_MAX),
        ] {
            dctx.set_parameter(param)
                .map_err(|code| zstd_error("zstd parameters", code))?;
        }
        Ok::<_, io::Error>(dctx)
    };
    let pool = Pool::new(options.threads, "zstd-decompress", || {
        let mut dctx = new_dctx()?;
        Ok(move |(frame, size): (Bytes, u64)| one_shot(&mut dctx, &frame, size).map(Bytes::from))
    })?;
    // This thread's own, for frames with no content and frames decoded as a stream.
    let mut dctx = new_dctx()?;
    let mut input = Input {
        input,
        current: Bytes::new(),
        ended: false,
    };
    let (mut content, mut empty) = (0u64, 0u64);
    loop {
        // zstd_safe's content size needs the whole frame header: 18 bytes at most.
        while input.current.len() < 18 && input.pull()? {}
        if input.current.is_empty() {
            return Ok(());
        }
        let produced = match one_shot_size(&mut input)? {
            Some((0, frame_len)) => {
                // Checked here (it may not hold content after all), not handed out.
                let frame = input.current.split_to(frame_len);
                one_shot(&mut dctx, &frame, 0)?;
                0
            }
            Some((size, frame_len)) => {
                let frame = input.current.split_to(frame_len);
                if !emit(Piece::Decoding(pool.submit((frame, size))?)) {
                    return Err(stopped());
                }
                size
            }
            None => stream_frame(&mut dctx, &mut input, emit)?,
        };
        content += produced;
        if produced == 0 {
            empty += 1;
            if empty > EMPTY_FRAMES_BASE + content / CONTENT_PER_EMPTY {
                return Err(invalid(format!(
                    "more than {EMPTY_FRAMES_BASE} zstd frames with no content, and one per \
                     {CONTENT_PER_EMPTY} bytes of content"
                )));
            }
        }
    }
}

/// Decompresses a whole frame of a known size in one call.
fn one_shot(dctx: &mut DCtx, frame: &[u8], size: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(size as usize);
    dctx.decompress(&mut out, frame)
        .map_err(|code| zstd_error("zstd decompression", code))?;
    if out.len() as u64 != size {
        return Err(invalid(format!(
            "a zstd frame declares {size} bytes but holds {}",
            out.len()
        )));
    }
    Ok(out)
}

/// The content size and length of the frame the input starts with, when it can be decompressed
/// in one call: it declares at most [`MAX_ONE_SHOT`] bytes and ends within [`MAX_GATHER`].
fn one_shot_size(input: &mut Input<'_>) -> io::Result<Option<(u64, usize)>> {
    let size = match zstd_safe::get_frame_content_size(&input.current) {
        Ok(Some(size)) if size <= MAX_ONE_SHOT => size,
        _ => return Ok(None),
    };
    loop {
        match zstd_safe::find_frame_compressed_size(&input.current) {
            Ok(n) => return Ok(Some((size, n))),
            Err(_) if input.current.len() < MAX_GATHER && input.pull()? => {}
            Err(_) => return Ok(None),
        }
    }
}

/// Decompresses the frame the input starts with as a stream, in pieces of [`STREAM_CHUNK`]
/// bytes, up to its end (the input after it is left for the next frame). Returns its content's
/// size.
fn stream_frame(
    dctx: &mut DCtx,
    input: &mut Input<'_>,
    emit: &mut dyn FnMut(Piece) -> bool,
) -> io::Result<u64> {
    dctx.reset(zstd_safe::ResetDirective::SessionOnly)
        .map_err(|code| zstd_error("zstd reset", code))?;
    let mut produced = 0u64;
    let mut out = Vec::with_capacity(STREAM_CHUNK);
    loop {
        if input.current.is_empty() && !input.pull()? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends in the middle of a zstd frame",
            ));
        }
        let mut src = InBuffer::around(&input.current);
        let filled = out.len();
        let mut dst = OutBuffer::around_pos(&mut out, filled);
        let hint = dctx
            .decompress_stream(&mut dst, &mut src)
            .map_err(|code| zstd_error("zstd decompression", code))?;
        let consumed = src.pos();
        input.current.advance(consumed);
        let done = hint == 0;
        if (done && !out.is_empty()) || out.len() == out.capacity() {
            produced += out.len() as u64;
            let full = std::mem::replace(&mut out, Vec::with_capacity(STREAM_CHUNK));
            if !emit(Piece::Ready(Ok(full.into()))) {
                return Err(stopped());
            }
        }
        if done {
            return Ok(produced);
        }
    }
}

/// The compressed input: what has arrived and not been used yet, and the rest.
struct Input<'a> {
    input: &'a mut dyn Iterator<Item = io::Result<Bytes>>,
    current: Bytes,
    ended: bool,
}

impl Input<'_> {
    /// Appends the next chunk to `current`; false at the end of the input.
    fn pull(&mut self) -> io::Result<bool> {
        if self.ended {
            return Ok(false);
        }
        let more = pull(self.input, &mut self.current)?;
        self.ended = !more;
        Ok(more)
    }
}

/// Appends the next chunk to `current`; false at the end of the input.
fn pull(
    input: &mut dyn Iterator<Item = io::Result<Bytes>>,
    current: &mut Bytes,
) -> io::Result<bool> {
    let Some(chunk) = input.next().transpose()? else {
        return Ok(false);
    };
    if current.is_empty() {
        *current = chunk;
    } else {
        // Reuses `current`'s buffer when nothing else holds it, so that gathering a frame from
        // many small chunks is not quadratic.
        let mut joined = BytesMut::from(std::mem::take(current));
        joined.extend_from_slice(&chunk);
        *current = joined.freeze();
    }
    Ok(true)
}

/// The rest of the input as a reader.
struct ChunksRead<'a> {
    current: Bytes,
    input: &'a mut dyn Iterator<Item = io::Result<Bytes>>,
}

impl Read for ChunksRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.input.next().transpose()? {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compressible, not trivially: words from a small vocabulary in a pseudo-random order.
    fn data(len: usize) -> Vec<u8> {
        let words = [
            &b"import "[..],
            b"export ",
            b"const x = ",
            b"42;\n",
            b"function f() {}\n",
        ];
        let mut out = Vec::with_capacity(len + 32);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        while out.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            out.extend_from_slice(words[(seed % words.len() as u64) as usize]);
            out.extend_from_slice(&seed.to_le_bytes()[..(seed % 3) as usize]);
        }
        out.truncate(len);
        out
    }

    fn encode(data: &[u8], threads: usize) -> Vec<u8> {
        let mut encoder = FrameEncoder::new(Vec::new(), 3, threads).unwrap();
        // Odd write sizes, as tar writes.
        for piece in data.chunks(70_001) {
            encoder.write_all(piece).unwrap();
        }
        encoder.finish().unwrap()
    }

    fn decode(compression: Compression, archive: &[u8], piece: usize) -> io::Result<Vec<Bytes>> {
        let options = DecodeOptions {
            threads: 2,
            frame_checksums: true,
        };
        decode_on(compression, archive, piece, options)
    }

    fn decode_on(
        compression: Compression,
        archive: &[u8],
        piece: usize,
        options: DecodeOptions,
    ) -> io::Result<Vec<Bytes>> {
        let mut input = archive.chunks(piece).map(|c| Ok(Bytes::copy_from_slice(c)));
        let mut pieces = Vec::new();
        decompress(compression, &mut input, options, &mut |piece| {
            pieces.push(piece);
            true
        })?;
        pieces.into_iter().map(Piece::wait).collect()
    }

    #[test]
    fn frames_declare_their_size_and_read_as_one_zstd_stream() {
        let data = data(FRAME_INPUT * 5 / 2);
        for threads in [1, 3] {
            let archive = encode(&data, threads);
            assert_eq!(zstd::stream::decode_all(&archive[..]).unwrap(), data);
            let mut rest = &archive[..];
            let mut sizes = Vec::new();
            while !rest.is_empty() {
                sizes.push(zstd_safe::get_frame_content_size(rest).unwrap().unwrap());
                rest = &rest[zstd_safe::find_frame_compressed_size(rest).unwrap()..];
            }
            let f = FRAME_INPUT as u64;
            assert_eq!(sizes, [f, f, f / 2], "threads {threads}");
        }
    }

    #[test]
    fn decompresses_frame_by_frame_whatever_the_chunking() {
        let data = data(FRAME_INPUT * 5 / 2);
        let archive = encode(&data, 2);
        for piece in [64 * 1024, 1_000_003, archive.len()] {
            for threads in [1, 3] {
                let options = DecodeOptions {
                    threads,
                    frame_checksums: true,
                };
                let chunks = decode_on(Compression::Zstd, &archive, piece, options).unwrap();
                // One chunk per frame: they were decompressed in one call each.
                assert_eq!(chunks.len(), 3, "piece {piece}, threads {threads}");
                assert_eq!(chunks.concat(), data, "piece {piece}, threads {threads}");
            }
        }
    }

    #[test]
    fn streams_what_has_no_declared_size_and_gzip() {
        let data = data(3 * 1024 * 1024 + 5);
        // One frame without a content size (what snapshots wrote before frames were cut),
        // after frames with one.
        let mut archive = encode(&data[..FRAME_INPUT / 2], 1);
        archive.extend(zstd::stream::encode_all(&data[FRAME_INPUT / 2..], 3).unwrap());
        let chunks = decode(Compression::Zstd, &archive, 100_000).unwrap();
        assert_eq!(chunks.concat(), data);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let chunks = decode(Compression::Gzip, &gz.finish().unwrap(), 100_000).unwrap();
        assert_eq!(chunks.concat(), data);
    }

    #[test]
    fn damage_is_an_error() {
        let data = data(FRAME_INPUT + 1000);
        let archive = encode(&data, 2);
        let mut flipped = archive.clone();
        let middle = flipped.len() / 3;
        flipped[middle] ^= 0x55;
        assert!(decode(Compression::Zstd, &flipped, 1 << 20).is_err());
        let cut = &archive[..archive.len() - 10];
        assert!(decode(Compression::Zstd, cut, 1 << 20).is_err());
        let mut trailing = archive.clone();
        trailing.extend_from_slice(b"not zstd");
        assert!(decode(Compression::Zstd, &trailing, 1 << 20).is_err());
    }

    #[test]
    fn frame_checksums_are_checked_unless_told_not_to() {
        let data = data(FRAME_INPUT + 1000);
        let mut archive = encode(&data, 1);
        // The last 4 bytes of a frame are its checksum.
        let end = zstd_safe::find_frame_compressed_size(&archive).unwrap();
        archive[end - 1] ^= 0x01;
        let e = decode_with(&archive, true).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        assert_eq!(decode_with(&archive, false).unwrap().concat(), data);
    }

    fn decode_with(archive: &[u8], frame_checksums: bool) -> io::Result<Vec<Bytes>> {
        let options = DecodeOptions {
            threads: 1,
            frame_checksums,
        };
        decode_on(Compression::Zstd, archive, archive.len(), options)
    }

    #[test]
    fn stops_when_told() {
        let archive = encode(&data(FRAME_INPUT * 2), 1);
        let mut input = std::iter::once(Ok(Bytes::from(archive)));
        let options = DecodeOptions {
            threads: 2,
            frame_checksums: true,
        };
        let e = decompress(Compression::Zstd, &mut input, options, &mut |_| false).unwrap_err();
        assert!(e.to_string().contains("stopped"), "{e}");
    }

    /// Frames with no content, nine bytes each: 100,000 of them in under a megabyte.
    fn empty_frames(n: usize, skippable: bool) -> Vec<u8> {
        let one = if skippable {
            [&0x184D_2A50u32.to_le_bytes()[..], &0u32.to_le_bytes()].concat()
        } else {
            zstd::bulk::compress(&[], 3).unwrap()
        };
        one.repeat(n)
    }

    #[test]
    fn frames_with_no_content_are_bounded_by_the_content() {
        let content = data(FRAME_INPUT);
        let sized = zstd::bulk::compress(&content, 3).unwrap();
        // As a legacy archive (no content size): frames after it are taken one by one too.
        let streamed = zstd::stream::encode_all(&content[..], 3).unwrap();
        for skippable in [false, true] {
            for first in [&sized, &streamed] {
                // One per 64 KiB of content, and 16, pass.
                let few = [first.clone(), empty_frames(16 + 64, skippable)].concat();
                assert_eq!(
                    decode(Compression::Zstd, &few, 1 << 20).unwrap().concat(),
                    content
                );
                let empty = empty_frames(100_000, skippable);
                assert!(empty.len() < 1 << 20);
                let many = [first.clone(), empty, sized.clone()].concat();
                match decode(Compression::Zstd, &many, 1 << 20) {
                    Err(e) => assert!(e.to_string().contains("no content"), "{e}"),
                    Ok(pieces) => panic!("decoded, {} pieces", pieces.len()),
                }
            }
        }
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        /// One frame of a stream: how its bytes are compressed.
        #[derive(Debug, Clone)]
        enum Frame {
            /// One shot, its content size declared.
            Sized(Vec<u8>, i32),
            /// Streamed, no content size (what snapshots wrote before frames were cut).
            Streamed(Vec<u8>, i32),
            /// A skippable frame, which decoders pass over.
            Skippable(Vec<u8>),
        }

        fn bytes() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..20_000),
                (0usize..200_000).prop_map(data),
            ]
        }

        fn frame() -> impl Strategy<Value = Frame> {
            prop_oneof![
                (bytes(), 1..6i32).prop_map(|(b, l)| Frame::Sized(b, l)),
                (bytes(), 1..6i32).prop_map(|(b, l)| Frame::Streamed(b, l)),
                prop::collection::vec(any::<u8>(), 0..300).prop_map(Frame::Skippable),
            ]
        }

        fn stream(frames: &[Frame]) -> Vec<u8> {
            let mut out = Vec::new();
            for f in frames {
                match f {
                    Frame::Sized(b, level) => {
                        out.extend(zstd::bulk::compress(b, *level).unwrap());
                    }
                    Frame::Streamed(b, level) => {
                        out.extend(zstd::stream::encode_all(&b[..], *level).unwrap());
                    }
                    Frame::Skippable(b) => {
                        out.extend(0x184D_2A50u32.to_le_bytes());
                        out.extend((b.len() as u32).to_le_bytes());
                        out.extend(b);
                    }
                }
            }
            out
        }

        /// `archive` cut into chunks of the sizes in `cuts`, in turn.
        fn cut(archive: &[u8], cuts: &[usize]) -> Vec<io::Result<Bytes>> {
            let mut chunks = Vec::new();
            let mut rest = archive;
            for c in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, after) = rest.split_at((*c).clamp(1, rest.len()));
                chunks.push(Ok(Bytes::copy_from_slice(chunk)));
                rest = after;
            }
            chunks
        }

        fn ours(archive: &[u8], cuts: &[usize], threads: usize) -> io::Result<Vec<u8>> {
            let options = DecodeOptions {
                threads,
                frame_checksums: true,
            };
            let mut input = cut(archive, cuts).into_iter();
            let mut pieces = Vec::new();
            decompress(Compression::Zstd, &mut input, options, &mut |piece| {
                pieces.push(piece);
                true
            })?;
            let pieces: Vec<Bytes> = pieces
                .into_iter()
                .map(Piece::wait)
                .collect::<io::Result<_>>()?;
            Ok(pieces.concat())
        }

        proptest! {
            /// Any zstd stream, cut anywhere, decompresses to what `zstd::decode_all` gives.
            #[test]
            fn decompresses_as_zstd_does(
                frames in prop::collection::vec(frame(), 1..5),
                cuts in prop::collection::vec(1usize..70_000, 1..6),
                threads in 1usize..4,
            ) {
                let archive = stream(&frames);
                let expected = zstd::stream::decode_all(&archive[..]).unwrap();
                prop_assert_eq!(ours(&archive, &cuts, threads).unwrap(), expected);
            }

            /// Damaged, it never panics and never gives other bytes than `zstd::decode_all`:
            /// either the same, or an error.
            #[test]
            fn damage_gives_the_same_bytes_or_an_error(
                frames in prop::collection::vec(frame(), 1..4),
                flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
                cuts in prop::collection::vec(1usize..70_000, 1..6),
            ) {
                let mut archive = stream(&frames);
                for (at, xor) in &flips {
                    let i = at.index(archive.len());
                    archive[i] ^= xor;
                }
                if let Ok(got) = ours(&archive, &cuts, 2) {
                    let expected = zstd::stream::decode_all(&archive[..]);
                    prop_assert!(expected.as_ref().is_ok_and(|e| *e == got));
                }
            }
        }
    }
}
