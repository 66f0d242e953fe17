//! Recyclable shared memory: the parent's argument [`Arena`] and a worker's
//! [`ResultSegments`].
//!
//! Both lend memfd segments to the other process under a token, and write into a segment again
//! only once the other side says (by its token) that nothing there maps it any more: writing
//! into pages that already exist is several times cheaper than into fresh ones. In the parent,
//! an [`Arena`] packs the buffers of one call into a few chunks, so a 200 KB argument costs a
//! `pwrite`, not a `memfd_create` + `mmap` + `munmap`.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_channel::Receiver;

use crate::envelope::{self, BufferRef};
use crate::fork::Birth;
use crate::platform::write_watch::Watch;
use crate::pool::{Job, JobHolds, JobId, Pool};
use crate::shm::{self, Access, SharedFile};

/// Buffers start at multiples of this, so that arrays rebuilt over them are aligned for any
/// dtype (and for SIMD loads).
pub const ALIGNMENT: usize = 64;
/// Default size of an arena chunk; a larger buffer gets a chunk of its own.
pub const DEFAULT_CHUNK_SIZE: usize = 16 << 20;

/// Where [`Arena::place`] put a buffer: `len` bytes at `offset` of chunk number `chunk`, whose
/// token was `token` (a placement in a chunk retired since is refused, never misread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub chunk: usize,
    pub offset: usize,
    pub len: usize,
    pub token: u64,
}

/// Names one argument buffer by its owner's identity (for Python: the owner's `id()`, the
/// buffer's address and length), so that the same memory passed to many tasks is placed once.
pub type Identity = (u64, u64, u64);

/// Most shared-memory chunks one job may refer to: the descriptors one frame carries with its
/// carriers (see `protocol`); a worker's open-file limit is usually lower.
pub const MAX_CHUNKS_PER_JOB: usize = crate::protocol::MAX_FRAME_FDS;

/// Recyclable segments kept ready at most (per arena, per worker).
const MAX_FREE_SEGMENTS: usize = 4;

/// A process-wide unique token for a recyclable segment (0 is "not recyclable").
fn new_token() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The shared memory of one call's arguments: buffers packed into memfd chunks.
///
/// Jobs *hold* the chunks their buffers lie in until they complete; each job also makes its
/// worker map the chunk, until the worker reports (by the chunk's token) that nothing there uses
/// it any more. A full chunk neither held nor mapped is recycled — its pages are written again,
/// several times cheaper than fresh ones — or closed. Chunks still mapped by a worker when the
/// arena goes are closed: the worker's mapping keeps the memory while its objects use it.
///
/// Allocating tmpfs pages (and zeroing them) costs as much as copying into them, so a helper
/// thread prepares the next chunk ahead of time, and frees closed ones.
#[derive(Debug)]
pub(crate) struct Arena {
    chunk_size: usize,
    chunks: Vec<Option<Chunk>>,
    current: Option<usize>,
    spare: Option<Receiver<io::Result<SharedFile>>>,
    recycled: Vec<SharedFile>,
    /// The process whose workers map the chunks: a forked child shares the memfds, so its
    /// writes would land in memory the parent's jobs use.
    birth: Birth,
    /// Buffers placed by identity, while their chunk is open.
    identities: HashMap<Identity, Placed>,
    /// The current call of the session (see [`Arena::new_call`]).
    call: u64,
    /// Tells the workers that the arena gives up large chunks they may keep mapped (see
    /// `worker::Endpoint`): they drop them, and report them unmapped once nothing uses them.
    forgetter: Option<Forget>,
    /// Bytes written into chunks so far (what placing arguments copied; run reports).
    bytes_written: u64,
}

/// Tells every worker to stop keeping the mappings of these chunk tokens.
pub type Forgetter = Arc<dyn Fn(&[u64]) + Send + Sync>;

/// A [`Forgetter`], held by the arena.
struct Forget(Forgetter);

impl std::fmt::Debug for Forget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Forget")
    }
}

/// A buffer placed by identity.
#[derive(Debug)]
struct Placed {
    placement: Placement,
    /// For a large buffer (kept across calls): how a later call proves the caller's bytes
    /// unchanged since they were copied.
    proof: Option<Unchanged>,
    /// The call in which the caller's bytes were last known to equal the copy.
    verified_in: u64,
}

/// The proof that a large buffer still equals its copy in a later call.
///
/// A fingerprint costs each later call one read of the buffer (~27 ms for 400 MB); a watch costs
/// a check nothing, but the caller's next write to each watched page a minor fault, and it
/// splits the buffer's huge pages (a 400 MB array rewritten once: ~90 ms instead of ~30 ms, and
/// 4 KiB pages after). So a buffer is fingerprinted until two checks running find it unchanged,
/// and watched from then on: an array rewritten between calls is never write-protected, and one
/// reused as it is stops being read after its third call.
#[derive(Debug)]
enum Unchanged {
    /// The fingerprint of what was copied (the buffer is read again, at memory speed), and
    /// whether the last check found it unchanged.
    Fingerprint { fingerprint: u128, stable: bool },
    /// Its pages are watched for writes since a check that found it unchanged (a page-table
    /// scan, well under a millisecond for 400 MB).
    Watched(Watch),
}

impl Unchanged {
    fn of_copy(bytes: &[u8]) -> Self {
        Unchanged::Fingerprint {
            fingerprint: crate::hash::fingerprint(bytes),
            stable: false,
        }
    }

    /// Whether `bytes` still equal the copy. A stable buffer's watch starts before its bytes are
    /// read for the check, so no write slips between the check and the watch.
    fn holds_for(&mut self, bytes: &[u8]) -> bool {
        match self {
            Unchanged::Watched(watch) => watch.unchanged(bytes),
            Unchanged::Fingerprint {
                fingerprint,
                stable,
            } => {
                let watch = if *stable { Watch::start(bytes) } else { None };
                let same = crate::hash::fingerprint(bytes) == *fingerprint;
                *stable = same;
                if let Some(watch) = watch.filter(|_| same) {
                    *self = Unchanged::Watched(watch);
                }
                same
            }
        }
    }
}

impl Placed {
    /// Whether the copy still holds `bytes` in call `call`: yes within the call that checked
    /// it; in a later call, only for a large buffer whose proof still holds.
    fn still_holds(&mut self, bytes: &[u8], call: u64) -> bool {
        self.placement.len == bytes.len()
            && (self.verified_in == call
                || self
                    .proof
                    .as_mut()
                    .is_some_and(|proof| proof.holds_for(bytes)))
    }
}

#[derive(Debug)]
struct Chunk {
    file: SharedFile,
    token: u64,
    used: usize,
    holds: usize,
    mapped: usize,
    full: bool,
    /// Identities placed in this chunk: forgotten when it retires.
    identities: Vec<Identity>,
}

impl Arena {
    pub(crate) fn new(chunk_size: usize) -> Self {
        Self {
            chunk_size: chunk_size.max(ALIGNMENT),
            chunks: Vec::new(),
            current: None,
            spare: None,
            recycled: Vec::new(),
            birth: Birth::here(),
            identities: HashMap::new(),
            call: 0,
            forgetter: None,
            bytes_written: 0,
        }
    }

    /// Tell `forgetter` when large chunks are given up.
    pub(crate) fn set_forgetter(&mut self, forgetter: Forgetter) {
        self.forgetter.get_or_insert(Forget(forgetter));
    }

    /// Large chunks are kept mapped by workers: tell them when one is given up.
    fn give_up(&self, chunk: usize) {
        let large = self
            .chunks
            .get(chunk)
            .and_then(Option::as_ref)
            .filter(|c| c.file.len() > self.chunk_size);
        if let (Some(entry), Some(Forget(forgetter))) = (large, &self.forgetter) {
            forgetter(&[entry.token]);
        }
    }

    /// A new call of the session begins: a buffer placed by identity in an earlier call is
    /// reused only once its contents are proven unchanged (the caller may have modified the
    /// array in place between calls); small ones are simply placed again.
    pub(crate) fn new_call(&mut self) {
        self.call += 1;
    }

    /// Where the buffer of `identity` lies, copying `bytes` in on first sight (while its chunk
    /// is open); without an identity, always a fresh copy.
    pub(crate) fn place_once(
        &mut self,
        identity: Option<Identity>,
        bytes: &[u8],
    ) -> io::Result<Placement> {
        if let Some(key) = identity {
            let call = self.call;
            if let Some(placed) = self.identities.get_mut(&key) {
                if placed.still_holds(bytes, call) {
                    placed.verified_in = call;
                    return Ok(placed.placement);
                }
                // Changed since (or too small to keep across calls): placed afresh below; the
                // old copy stays for the jobs that hold it.
                let chunk = placed.placement.chunk;
                self.identities.remove(&key);
                self.give_up(chunk);
            }
        }
        let large = bytes.len() > self.chunk_size;
        let proof = (identity.is_some() && large).then(|| Unchanged::of_copy(bytes));
        let placement = self.place(bytes)?;
        if let Some(key) = identity {
            self.identities.insert(
                key,
                Placed {
                    placement,
                    proof,
                    verified_in: self.call,
                },
            );
            if let Some(Some(chunk)) = self.chunks.get_mut(placement.chunk) {
                chunk.identities.push(key);
            }
        }
        Ok(placement)
    }

    /// The owner of `identity` is gone: its memory may be reused for something else.
    pub(crate) fn forget(&mut self, identity: Identity) {
        if let Some(placed) = self.identities.remove(&identity) {
            self.give_up(placed.placement.chunk);
            self.retire_if_unused(placed.placement.chunk);
        }
    }

    /// A chunk of the standard size: a recycled one, or the one prepared ahead, or a new one.
    fn standard_file(&mut self) -> io::Result<SharedFile> {
        if let Some(file) = self.recycled.pop() {
            return Ok(file);
        }
        let prepared = self.spare.take().and_then(|rx| rx.recv().ok());
        self.spare = shm::prepare_later(c"ferrojob-arguments", self.chunk_size);
        match prepared {
            Some(Ok(file)) => Ok(file),
            // A failed preallocation (or none yet): allocate as we write.
            Some(Err(_)) | None => SharedFile::create(c"ferrojob-arguments"),
        }
    }

    /// Copy `bytes` into the arena.
    pub(crate) fn place(&mut self, bytes: &[u8]) -> io::Result<Placement> {
        if !self.birth.is_here() {
            return Err(io::Error::other(format!(
                "this shared-memory arena belongs to process {}; a forked child cannot write to it",
                self.birth.pid()
            )));
        }
        if bytes.len() > self.chunk_size {
            let chunk = self.new_chunk(SharedFile::create(c"ferrojob-arguments")?);
            self.write(chunk, 0, bytes)?;
            self.chunks[chunk].as_mut().expect("new").full = true;
            return Ok(self.placement(chunk, 0, bytes.len()));
        }
        let (chunk, offset) = match self.current.and_then(|c| self.room_in(c, bytes.len())) {
            Some(place) => place,
            None => {
                if let Some(previous) = self.current.take() {
                    if let Some(chunk) = self.chunks[previous].as_mut() {
                        chunk.full = true;
                    }
                }
                let file = self.standard_file()?;
                let chunk = self.new_chunk(file);
                self.current = Some(chunk);
                (chunk, 0)
            }
        };
        self.write(chunk, offset, bytes)?;
        Ok(self.placement(chunk, offset, bytes.len()))
    }

    fn placement(&self, chunk: usize, offset: usize, len: usize) -> Placement {
        let token = self.chunks[chunk].as_ref().map_or(0, |c| c.token);
        Placement {
            chunk,
            offset,
            len,
            token,
        }
    }

    fn room_in(&self, chunk: usize, len: usize) -> Option<(usize, usize)> {
        let used = self.chunks[chunk].as_ref()?.used;
        let offset = used.next_multiple_of(ALIGNMENT);
        (offset + len <= self.chunk_size).then_some((chunk, offset))
    }

    fn new_chunk(&mut self, file: SharedFile) -> usize {
        self.chunks.push(Some(Chunk {
            file,
            token: new_token(),
            used: 0,
            holds: 0,
            mapped: 0,
            full: false,
            identities: Vec::new(),
        }));
        self.chunks.len() - 1
    }

    fn write(&mut self, chunk: usize, offset: usize, bytes: &[u8]) -> io::Result<()> {
        let entry = self.chunks[chunk].as_mut().expect("placed in a live chunk");
        entry.file.write_at(offset, bytes)?;
        entry.used = offset + bytes.len();
        self.bytes_written = self.bytes_written.saturating_add(bytes.len() as u64);
        Ok(())
    }

    /// A descriptor of `chunk` for a job (the job owns it), and the chunk's token.
    pub(crate) fn duplicate_fd(&self, chunk: usize) -> io::Result<(OwnedFd, u64)> {
        let entry = self.live(chunk)?;
        Ok((entry.file.duplicate_fd()?, entry.token))
    }

    /// A job that refers to `chunk` was submitted: it holds the chunk, and its worker maps it.
    pub(crate) fn hold(&mut self, chunk: usize) -> io::Result<()> {
        let entry = self.live_mut(chunk)?;
        entry.holds += 1;
        entry.mapped += 1;
        Ok(())
    }

    /// A job that held `chunk` completed. Returns whether the chunk was retired (recycled or
    /// closed: what was placed in it is gone).
    pub(crate) fn release(&mut self, chunk: usize) -> bool {
        if let Some(Some(entry)) = self.chunks.get_mut(chunk) {
            entry.holds = entry.holds.saturating_sub(1);
        }
        self.retire_if_unused(chunk)
    }

    /// A worker no longer maps the chunks of these tokens (tokens of other arenas are ignored).
    /// Returns the chunks retired.
    pub(crate) fn unmapped(&mut self, tokens: &[u64]) -> Vec<usize> {
        let mut retired = Vec::new();
        for &token in tokens {
            let found = self
                .chunks
                .iter()
                .position(|c| c.as_ref().is_some_and(|c| c.token == token));
            if let Some(chunk) = found {
                let entry = self.chunks[chunk].as_mut().expect("found");
                entry.mapped = entry.mapped.saturating_sub(1);
                if self.retire_if_unused(chunk) {
                    retired.push(chunk);
                }
            }
        }
        retired
    }

    /// Retire every full chunk that no job holds and no worker maps; returns their numbers.
    pub(crate) fn sweep(&mut self) -> Vec<usize> {
        (0..self.chunks.len())
            .filter(|&chunk| self.retire_if_unused(chunk))
            .collect()
    }

    fn retire_if_unused(&mut self, chunk: usize) -> bool {
        let identities = &self.identities;
        let slot = match self.chunks.get_mut(chunk) {
            Some(slot) => slot,
            None => return false,
        };
        // A large buffer (a chunk of its own) placed by identity stays while its owner lives:
        // the caller may pass the same object again in this session, and copying it again would
        // cost what placing it once saved. Once its owner is gone and no job holds it, it is
        // closed at once: it is never written again, so workers that still map it (told by
        // `give_up` to let go) lose nothing, and its pages go when their mappings do. Chunks of
        // smaller buffers wait for every worker to unmap them, to be recycled (their pages
        // written again: cheaper than fresh ones), and forget what they held.
        let chunk_size = self.chunk_size;
        let unused = slot.as_ref().is_some_and(|c| {
            let large = c.file.len() > chunk_size;
            let kept_for_its_owner =
                large && c.identities.iter().any(|key| identities.contains_key(key));
            c.full && c.holds == 0 && (c.mapped == 0 || large) && !kept_for_its_owner
        });
        if !unused {
            return false;
        }
        let Some(entry) = slot.take() else {
            return false;
        };
        for key in &entry.identities {
            self.identities.remove(key);
        }
        let standard = entry.file.len() <= self.chunk_size;
        if standard && self.recycled.len() < MAX_FREE_SEGMENTS {
            self.recycled.push(entry.file);
        } else {
            shm::free_later(entry.file);
        }
        true
    }

    /// Bytes copied into shared memory since the arena was made.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Chunks currently open (for tests and leak checks).
    pub(crate) fn n_open_chunks(&self) -> usize {
        self.chunks.iter().flatten().count()
    }

    fn live(&self, chunk: usize) -> io::Result<&Chunk> {
        self.chunks
            .get(chunk)
            .and_then(Option::as_ref)
            .ok_or_else(|| closed_chunk(chunk))
    }

    fn live_mut(&mut self, chunk: usize) -> io::Result<&mut Chunk> {
        self.chunks
            .get_mut(chunk)
            .and_then(Option::as_mut)
            .ok_or_else(|| closed_chunk(chunk))
    }
}

fn closed_chunk(chunk: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("arena chunk {chunk} is closed"),
    )
}

impl Drop for Arena {
    fn drop(&mut self) {
        if let Some(Forget(forgetter)) = &self.forgetter {
            let large: Vec<u64> = self
                .chunks
                .iter()
                .flatten()
                .filter(|c| c.file.len() > self.chunk_size)
                .map(|c| c.token)
                .collect();
            if !large.is_empty() {
                forgetter(&large);
            }
        }
        for chunk in self.chunks.drain(..).flatten() {
            shm::free_later(chunk.file);
        }
        for file in self.recycled.drain(..) {
            shm::free_later(file);
        }
        // A chunk still being prepared is freed by the helper when its reply finds no receiver.
    }
}

/// The argument arena of one session (a call, or a `with Parallel` block), shared with the jobs
/// that hold its chunks: the one owner of the invariant "no chunk is written again while a job
/// holds it or a worker maps it". Placing, holding, releasing on completion, cancellation or a
/// worker's death ([`Holds`] are dropped then), and the workers' reports of unmapped chunks all
/// go through it.
#[derive(Debug, Clone)]
pub struct Arguments {
    arena: Arc<Mutex<Arena>>,
    /// The pool whose workers map this arena's chunks (see [`Arguments::for_pool`]); its jobs
    /// go to that pool only.
    pool: Option<u64>,
}

impl Default for Arguments {
    fn default() -> Self {
        Self::new(DEFAULT_CHUNK_SIZE)
    }
}

impl Arguments {
    /// An arena of no pool's (its jobs go to any pool, whose workers are then not told of the
    /// large chunks it gives up): for tests and the engine's own tools.
    pub fn new(chunk_size: usize) -> Self {
        Self {
            arena: Arc::new(Mutex::new(Arena::new(chunk_size))),
            pool: None,
        }
    }

    /// The arena of a session on `pool`: bound to it for good, so that the workers that map its
    /// large chunks are the ones told when it gives them up, and its jobs are refused by any
    /// other pool.
    pub fn for_pool(pool: &Pool, chunk_size: usize) -> Self {
        let mut arena = Arena::new(chunk_size);
        let releaser = pool.releaser();
        arena.set_forgetter(Arc::new(move |tokens: &[u64]| releaser.broadcast(tokens)));
        Self {
            arena: Arc::new(Mutex::new(arena)),
            pool: Some(pool.id()),
        }
    }

    fn arena(&self) -> MutexGuard<'_, Arena> {
        self.arena
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// See [`Arena::place_once`].
    pub fn place(&self, identity: Option<Identity>, bytes: &[u8]) -> io::Result<Placement> {
        self.arena().place_once(identity, bytes)
    }

    /// See [`Arena::forget`].
    pub fn forget(&self, identity: Identity) {
        self.arena().forget(identity)
    }

    /// See [`Arena::new_call`].
    pub fn new_call(&self) {
        self.arena().new_call()
    }

    /// Chunks open (for tests and leak checks).
    pub fn n_open_chunks(&self) -> usize {
        self.arena().n_open_chunks()
    }

    /// Bytes copied into shared memory since the arena was made: a buffer placed again
    /// unchanged adds nothing.
    pub fn bytes_written(&self) -> u64 {
        self.arena().bytes_written()
    }

    /// A job whose out-of-band buffers are `placements`, mapped by its worker with `access`: its
    /// payload is the envelope (where each buffer lies) followed by `body`; it carries a
    /// descriptor per chunk and holds those chunks until it is dropped.
    pub fn job(
        &self,
        id: JobId,
        body: &[u8],
        placements: &[Placement],
        access: Access,
    ) -> io::Result<Job> {
        self.job_locked(self.arena(), id, body, placements, access)
    }

    /// Place `buffers` (each once per identity, see [`Arena::place_once`]) and make the job
    /// that holds them, under one lock: replies release chunks from the pool's reader threads,
    /// and no chunk may retire between a buffer being placed in it and its job holding it.
    pub fn job_with_buffers(
        &self,
        id: JobId,
        body: &[u8],
        buffers: &[(Option<Identity>, &[u8])],
        access: Access,
    ) -> io::Result<Job> {
        let mut arena = self.arena();
        let placements = buffers
            .iter()
            .map(|&(identity, bytes)| arena.place_once(identity, bytes))
            .collect::<io::Result<Vec<_>>>()?;
        self.job_locked(arena, id, body, &placements, access)
    }

    fn job_locked(
        &self,
        mut arena: MutexGuard<'_, Arena>,
        id: JobId,
        body: &[u8],
        placements: &[Placement],
        access: Access,
    ) -> io::Result<Job> {
        let mut chunks: Vec<usize> = Vec::new();
        let mut refs = Vec::with_capacity(placements.len());
        for placement in placements {
            let live = arena.live(placement.chunk)?;
            if live.token != placement.token {
                return Err(closed_chunk(placement.chunk));
            }
            let segment = match chunks.iter().position(|&c| c == placement.chunk) {
                Some(index) => index,
                None => {
                    chunks.push(placement.chunk);
                    chunks.len() - 1
                }
            };
            refs.push(BufferRef {
                segment: u32::try_from(segment).map_err(io::Error::other)?,
                offset: placement.offset as u64,
                len: placement.len as u64,
            });
        }
        if chunks.len() > MAX_CHUNKS_PER_JOB {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a batch refers to {} shared-memory chunks, more than the {MAX_CHUNKS_PER_JOB} \
                     one job can carry; use a smaller batch_size",
                    chunks.len()
                ),
            ));
        }
        let mut fds = Vec::with_capacity(chunks.len());
        let mut tokens = Vec::with_capacity(chunks.len());
        for &chunk in &chunks {
            let (fd, token) = arena.duplicate_fd(chunk)?;
            fds.push(fd);
            tokens.push(token);
        }
        for &chunk in &chunks {
            arena.hold(chunk)?;
        }
        // Held now: retiring the full chunks nobody holds cannot touch this job's.
        arena.sweep();
        drop(arena);
        Ok(Job {
            id,
            payload: envelope::encode(access, &refs, &tokens, &[], body),
            fds,
            n_tasks: 1,
            pool: self.pool,
            holds: Some(Box::new(Holds {
                arguments: self.clone(),
                chunks,
            })),
        })
    }
}

/// The chunks a job holds, released when it is dropped (the job completed, was cancelled, or
/// its worker died).
#[derive(Debug)]
pub struct Holds {
    arguments: Arguments,
    chunks: Vec<usize>,
}

impl JobHolds for Holds {
    /// A reply said the worker no longer maps the chunks of these tokens (tokens of other
    /// arenas are ignored).
    fn unmapped(&self, tokens: &[u64]) {
        if !tokens.is_empty() {
            self.arguments.arena().unmapped(tokens);
        }
    }
}

impl Drop for Holds {
    fn drop(&mut self) {
        let mut arena = self.arguments.arena();
        for &chunk in &self.chunks {
            arena.release(chunk);
        }
    }
}

/// A worker's result segments: each reply's buffers are packed into one segment, lent to the
/// parent under a token; when the parent releases the token, the segment is written again for a
/// later reply (its pages already exist), up to [`crate::shm::reuse_budget`] bytes of them.
#[derive(Debug, Default)]
pub struct ResultSegments {
    lent: Vec<(u64, SharedFile)>,
    free: Vec<SharedFile>,
}

impl ResultSegments {
    pub const fn new() -> Self {
        Self {
            lent: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Pack `buffers` into a segment (the smallest free one large enough, else a new one) and
    /// lend it: returns a descriptor for the reply, the segment's token and the buffers' places.
    pub fn pack(&mut self, buffers: &[&[u8]]) -> io::Result<(OwnedFd, u64, Vec<BufferRef>)> {
        let mut places = Vec::with_capacity(buffers.len());
        let mut end = 0usize;
        for bytes in buffers {
            places.push(BufferRef {
                segment: 0,
                offset: end as u64,
                len: bytes.len() as u64,
            });
            end = (end + bytes.len()).next_multiple_of(ALIGNMENT);
        }
        let reusable = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, file)| file.len() >= end)
            .min_by_key(|(_, file)| file.len())
            .map(|(index, _)| index);
        let mut file = match reusable {
            Some(index) => self.free.swap_remove(index),
            None => SharedFile::create(c"ferrojob-results")?,
        };
        for (bytes, place) in buffers.iter().zip(&places) {
            file.write_at(place.offset as usize, bytes)?;
        }
        let fd = file.duplicate_fd()?;
        let token = new_token();
        self.lent.push((token, file));
        Ok((fd, token, places))
    }

    /// The parent no longer maps the segment of `token`: it may be written again (kept while
    /// the free segments stay within [`crate::shm::reuse_budget`]; writing into existing pages,
    /// through a kept mapping, is about three times as fast as into new ones: ~5 ms against
    /// ~14 ms for 50 MB).
    pub fn release(&mut self, token: u64) {
        if let Some(index) = self.lent.iter().position(|(t, _)| *t == token) {
            let (_, file) = self.lent.swap_remove(index);
            let kept: usize = self.free.iter().map(SharedFile::len).sum();
            if kept.saturating_add(file.len()) <= crate::shm::reuse_budget() {
                self.free.push(file);
            }
        }
    }

    /// Segments lent and not released yet (for tests).
    pub fn n_lent(&self) -> usize {
        self.lent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::check_bounds;
    use crate::shm::{Access, Mapping};

    fn read(mapping: &Mapping, offset: usize, len: usize) -> Vec<u8> {
        // SAFETY: test-only read of a live mapping, inside its bounds (checked by the caller).
        unsafe { std::slice::from_raw_parts(mapping.as_ptr().add(offset), len).to_vec() }
    }

    #[test]
    fn the_arena_packs_aligned_buffers_into_chunks() {
        let mut arena = Arena::new(256);
        let a = arena.place(&[1u8; 100]).unwrap();
        let b = arena.place(&[2u8; 100]).unwrap();
        let c = arena.place(&[3u8; 100]).unwrap(); // does not fit after b: a new chunk
        let big = arena.place(&[4u8; 1000]).unwrap(); // larger than a chunk: its own
        assert_eq!((a.chunk, a.offset), (0, 0));
        assert_eq!((b.chunk, b.offset), (0, 128));
        assert_eq!((c.chunk, c.offset), (1, 0));
        assert_eq!((big.chunk, big.offset), (2, 0));
        let (fd, token) = arena.duplicate_fd(0).unwrap();
        assert_ne!(token, 0);
        let mapping = Mapping::map(fd, Access::ReadOnly).unwrap();
        assert_eq!(read(&mapping, 128, 100), vec![2u8; 100]);
        let mapping = Mapping::map(arena.duplicate_fd(2).unwrap().0, Access::ReadOnly).unwrap();
        assert_eq!(mapping.len(), 1000);
    }

    #[test]
    fn full_chunks_retire_when_no_job_holds_and_no_worker_maps_them() {
        let mut arena = Arena::new(128);
        let first = arena.place(&[0u8; 100]).unwrap();
        arena.hold(first.chunk).unwrap();
        let (_, token) = arena.duplicate_fd(first.chunk).unwrap();
        let second = arena.place(&[0u8; 100]).unwrap(); // fills chunk 0
        arena.hold(second.chunk).unwrap();
        assert!(arena.sweep().is_empty()); // chunk 0 is full but held
        assert!(!arena.release(first.chunk)); // no longer held, still mapped by its worker
        assert_eq!(arena.unmapped(&[token, 12345]), vec![first.chunk]);
        assert!(arena.duplicate_fd(first.chunk).is_err());
        assert!(!arena.release(second.chunk)); // the current chunk stays open
        assert_eq!(arena.n_open_chunks(), 1);
    }

    #[test]
    fn retired_chunks_are_recycled_with_their_contents_replaced() {
        let mut arena = Arena::new(128);
        let old = arena.place(&[1u8; 100]).unwrap();
        arena.place(&[2u8; 100]).unwrap(); // fills chunk 0: it retires at the sweep
        assert_eq!(arena.sweep(), vec![old.chunk]);
        let reused = arena.place(&[3u8; 64]).unwrap(); // chunk 1 is full: chunk 0's file again
        let (fd, _) = arena.duplicate_fd(reused.chunk).unwrap();
        let mapping = Mapping::map(fd, Access::ReadOnly).unwrap();
        assert_eq!(read(&mapping, 0, 64), vec![3u8; 64]);
        assert_eq!(read(&mapping, 64, 36), vec![1u8; 36]); // the old bytes beyond: recycled
    }

    #[test]
    fn a_forked_child_cannot_write_into_its_parents_arena() {
        let mut arena = Arena::new(256);
        let placed = arena.place(&[1u8; 100]).unwrap();
        // SAFETY: the child only calls `place` (no lock shared with other threads) and _exit.
        match unsafe { libc::fork() } {
            0 => {
                let refused = arena.place(&[9u8; 100]).is_err();
                std::mem::forget(arena);
                // SAFETY: leave the forked child at once, without the parent's destructors.
                unsafe { libc::_exit(if refused { 0 } else { 1 }) }
            }
            child => {
                let mut status = 0;
                // SAFETY: waiting for the child we just forked.
                assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
                assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            }
        }
        let next = arena.place(&[2u8; 100]).unwrap();
        let mapping = Mapping::map(
            arena.duplicate_fd(placed.chunk).unwrap().0,
            Access::ReadOnly,
        )
        .unwrap();
        assert_eq!(read(&mapping, next.offset, 100), vec![2u8; 100]);
    }

    #[test]
    fn a_large_buffer_placed_by_identity_stays_while_its_owner_lives() {
        let mut arena = Arena::new(128);
        let key = (1, 2, 1000);
        let kept = arena.place_once(Some(key), &[1u8; 1000]).unwrap(); // a chunk of its own
        assert!(arena.sweep().is_empty());
        assert_eq!(arena.place_once(Some(key), &[1u8; 1000]).unwrap(), kept);
        assert_eq!(arena.bytes_written(), 1000, "placed again, copied once");
        arena.forget(key); // the owner died: the chunk goes
        assert!(arena.duplicate_fd(kept.chunk).is_err());
        // A small one is recycled with its chunk, and placed again when passed again.
        let small = arena.place_once(Some((3, 4, 100)), &[5u8; 100]).unwrap();
        arena.place(&[6u8; 100]).unwrap(); // fills its chunk
        assert_eq!(arena.sweep(), vec![small.chunk]);
        assert_ne!(
            arena.place_once(Some((3, 4, 100)), &[5u8; 100]).unwrap(),
            small
        );
    }

    #[test]
    fn across_calls_a_large_buffer_is_reused_only_while_unchanged() {
        let mut arena = Arena::new(128);
        let key = (1, 2, 1000);
        // Private anonymous memory, as a large array's: its pages can be watched for writes
        // (a small heap allocation shares its pages with others, whose writes look like its own).
        let mut data = memmap2::MmapMut::map_anon(1000).unwrap();
        data.fill(1);
        let first = arena.place_once(Some(key), &data).unwrap();
        arena.new_call();
        assert_eq!(arena.place_once(Some(key), &data).unwrap(), first); // verified, reused
        arena.new_call();
        data[500] = 9; // modified in place between calls
        let second = arena.place_once(Some(key), &data).unwrap();
        assert_ne!(second, first);
        let mapping = Mapping::map(
            arena.duplicate_fd(second.chunk).unwrap().0,
            Access::ReadOnly,
        )
        .unwrap();
        assert_eq!(read(&mapping, 500, 1), vec![9]);
        // A small buffer is placed again in a new call (cheaper than proving it unchanged).
        let small = arena.place_once(Some((5, 6, 10)), &[3u8; 10]).unwrap();
        assert_eq!(
            arena.place_once(Some((5, 6, 10)), &[3u8; 10]).unwrap(),
            small
        ); // same call
        arena.new_call();
        assert_ne!(
            arena.place_once(Some((5, 6, 10)), &[3u8; 10]).unwrap(),
            small
        );
    }

    #[test]
    fn a_buffer_is_watched_only_once_two_checks_running_find_it_unchanged() {
        if !crate::platform::write_watch::available() {
            return;
        }
        let mut arena = Arena::new(128);
        let key = (3, 4, 4 * 4096);
        let mut data = memmap2::MmapMut::map_anon(4 * 4096).unwrap();
        data.fill(1);
        let watched =
            |arena: &Arena| matches!(arena.identities[&key].proof, Some(Unchanged::Watched(_)));
        let mut placement = arena.place_once(Some(key), &data).unwrap();
        assert!(!watched(&arena), "a fresh copy is fingerprinted");
        arena.new_call();
        assert_eq!(arena.place_once(Some(key), &data).unwrap(), placement);
        assert!(!watched(&arena), "unchanged once: still fingerprinted");
        for written in [10, 20] {
            // Rewritten between calls: copied again, and never write-protected.
            arena.new_call();
            data[written] = 2;
            let again = arena.place_once(Some(key), &data).unwrap();
            assert_ne!(again, placement);
            assert!(!watched(&arena));
            placement = again;
        }
        for _ in 0..2 {
            arena.new_call();
            assert_eq!(arena.place_once(Some(key), &data).unwrap(), placement);
        }
        assert!(watched(&arena), "unchanged twice running: watched");
        arena.new_call();
        assert_eq!(arena.place_once(Some(key), &data).unwrap(), placement);
        arena.new_call();
        data[30] = 3;
        assert_ne!(arena.place_once(Some(key), &data).unwrap(), placement);
        assert!(!watched(&arena), "seen written: fingerprinted again");
    }

    #[test]
    fn result_segments_are_lent_and_reused_once_released() {
        let mut segments = ResultSegments::new();
        let (fd, token, refs) = segments.pack(&[&b"hello"[..], &[7u8; 3][..]]).unwrap();
        assert_eq!(refs[1].offset, 64);
        let mapping = Mapping::map(fd, Access::CopyOnWrite).unwrap();
        assert_eq!(read(&mapping, 0, 5), b"hello");
        assert_eq!(read(&mapping, 64, 3), vec![7u8; 3]);
        check_bounds(&refs, &[mapping.len()]).unwrap();
        drop(mapping);
        assert_eq!(segments.n_lent(), 1);
        segments.release(token);
        let (fd, second, _) = segments.pack(&[&b"HELLO"[..]]).unwrap();
        assert_ne!(second, token);
        let mapping = Mapping::map(fd, Access::ReadOnly).unwrap();
        assert_eq!(read(&mapping, 0, 5), b"HELLO");
        assert_eq!(mapping.len(), 67); // the first segment, written again
        assert_eq!(segments.n_lent(), 1);
    }
}
