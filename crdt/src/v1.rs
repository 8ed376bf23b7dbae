//! A validating scan of lib0 v1 updates, run before yrs decodes one.
//!
//! It refuses what yrs mishandles on hostile input: counts larger than their bytes could hold
//! (yrs reserves memory for them up front), clocks that overflow `u32` and client ids wider than
//! 53 bits (yrs wraps or truncates them in release builds, corrupting the document), `Any`
//! values nested deeper than [`ANY_DEPTH_MAX`] (yrs decodes them recursively), legacy JSON
//! content (yrs cannot encode it back), subdocuments (yrs never frees their stores), and a
//! client's clocks written twice in one update (yrs would keep one version or a mix). It also
//! splits an update into runs of consecutive structs of one client, so that the document can
//! hand yrs only runs that continue what it already has (see `YDoc::apply_update`), and rewrites
//! the struct yrs cuts where a run overlaps the document when yrs would place its rest
//! inconsistently (see [`with_origin_at`]), and finds a struct naming as its parent an item that
//! holds no shared type, which the document refuses before yrs sees it (see [`non_type_parent`]).

/// Deepest nesting of arrays and maps accepted in an `Any` value.
pub(crate) const ANY_DEPTH_MAX: usize = 64;

/// Client ids are at most 53 bits wide (a JavaScript safe integer).
const CLIENT_MAX: u64 = crate::JS_INTEGER_MAX;

/// Consecutive structs of one client, as they appear in an update.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run<'a> {
    pub(crate) client: u64,
    /// Clock of the first struct.
    pub(crate) clock: u32,
    /// Clock after the last struct.
    pub(crate) end: u32,
    /// Number of structs (including empty ones, which yrs drops).
    pub(crate) structs: u32,
    /// The structs' encoding.
    pub(crate) bytes: &'a [u8],
}

/// A scanned update: its runs, then its delete set.
#[derive(Debug)]
pub(crate) struct Scan<'a> {
    pub(crate) runs: Vec<Run<'a>>,
    /// The encoding of the delete set (the end of the update).
    pub(crate) delete_set: &'a [u8],
    /// True when the delete set deletes anything.
    pub(crate) deletes: bool,
    /// True when a struct names its parent by id (see [`non_type_parent`]).
    pub(crate) parents_by_id: bool,
}

/// Encodes `runs` and a delete set (its encoding, or none) as one v1 update.
pub(crate) fn encode(runs: &[Run<'_>], delete_set: Option<&[u8]>) -> Vec<u8> {
    let size = runs.iter().map(|r| r.bytes.len() + 20).sum::<usize>();
    let mut out = Vec::with_capacity(size + delete_set.map_or(1, <[u8]>::len) + 5);
    write_var(&mut out, runs.len() as u64);
    for r in runs {
        write_var(&mut out, u64::from(r.structs));
        write_var(&mut out, r.client);
        write_var(&mut out, u64::from(r.clock));
        out.extend_from_slice(r.bytes);
    }
    match delete_set {
        Some(ds) => out.extend_from_slice(ds),
        None => out.push(0),
    }
    out
}

fn write_var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Result<T> = std::result::Result<T, String>;

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn u8(&mut self) -> Result<u8> {
        let b = *self.buf.get(self.pos).ok_or("unexpected end of update")?;
        self.pos += 1;
        Ok(b)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err("unexpected end of update".into());
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// An unsigned LEB128 integer of at most 64 bits.
    fn var_u64(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            value |= bits << shift;
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err("variable-length integer overflows 64 bits".into())
    }

    fn var_u32(&mut self) -> Result<u32> {
        u32::try_from(self.var_u64()?).map_err(|_| "integer overflows 32 bits".to_string())
    }

    /// A count of items that take at least `min_bytes` each: never more than the bytes left
    /// could hold.
    fn count(&mut self, min_bytes: usize) -> Result<usize> {
        let n = self.var_u64()?;
        if n > (self.remaining() / min_bytes) as u64 {
            return Err(format!("a count of {n} exceeds what the update can hold"));
        }
        Ok(n as usize)
    }

    /// lib0's signed variable-length integer (sign in the first byte), at most 64 bits.
    fn var_i64(&mut self) -> Result<()> {
        for _ in 0..9 {
            if self.u8()? < 0x80 {
                return Ok(());
            }
        }
        Err("signed integer overflows 64 bits".into())
    }

    fn var_bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.var_u32()? as usize;
        self.bytes(n)
    }

    fn string(&mut self) -> Result<&'a str> {
        std::str::from_utf8(self.var_bytes()?).map_err(|_| "string is not UTF-8".to_string())
    }

    fn client(&mut self) -> Result<u64> {
        let client = self.var_u64()?;
        if client > CLIENT_MAX {
            return Err(format!("client id {client} is wider than 53 bits"));
        }
        Ok(client)
    }

    fn id(&mut self) -> Result<(u64, u32)> {
        Ok((self.client()?, self.var_u32()?))
    }

    fn any(&mut self, depth: usize) -> Result<()> {
        if depth > ANY_DEPTH_MAX {
            return Err(format!(
                "a value is nested deeper than {ANY_DEPTH_MAX} levels"
            ));
        }
        match self.u8()? {
            127 | 126 | 121 | 120 => {}
            125 => self.var_i64()?,
            124 => {
                self.bytes(4)?;
            }
            123 | 122 => {
                self.bytes(8)?;
            }
            119 => {
                self.string()?;
            }
            118 => {
                for _ in 0..self.count(2)? {
                    self.string()?;
                    self.any(depth + 1)?;
                }
            }
            117 => {
                for _ in 0..self.count(1)? {
                    self.any(depth + 1)?;
                }
            }
            116 => {
                self.var_bytes()?;
            }
            tag => return Err(format!("unknown value type {tag}")),
        }
        Ok(())
    }

    /// An item after its info byte; returns its length in clock units (0: yrs drops it).
    fn item(&mut self, info: u8) -> Result<u64> {
        self.item_and_parent(info).map(|(len, _)| len)
    }

    /// The parent and map key of an item without origins: the parent it names by id, if it
    /// names one rather than a root type.
    fn parent_and_key(&mut self, info: u8) -> Result<Option<(u64, u32)>> {
        let parent = if self.var_u32()? == 1 {
            self.string()?;
            None
        } else {
            Some(self.id()?)
        };
        if info & 0x20 != 0 {
            self.string()?;
        }
        Ok(parent)
    }

    /// An item after its info byte: its length in clock units, and the parent it names by id
    /// (an item without origins inside a nested type).
    fn item_and_parent(&mut self, info: u8) -> Result<(u64, Option<(u64, u32)>)> {
        if info & 0x80 != 0 {
            self.id()?;
        }
        if info & 0x40 != 0 {
            self.id()?;
        }
        let parent = if info & 0xc0 == 0 {
            self.parent_and_key(info)?
        } else {
            None
        };
        let len = match info & 0x0f {
            // Deleted content.
            1 => u64::from(self.var_u32()?),
            // Legacy JSON content, which Yjs no longer writes: yrs 0.28 decodes one string more
            // than it encodes, so a document holding it would snapshot to bytes that do not load.
            2 => return Err("legacy JSON content is not supported".into()),
            // Binary.
            3 => {
                self.var_bytes()?;
                1
            }
            // String: its length in UTF-16 code units.
            4 => self.string()?.encode_utf16().count() as u64,
            // Embed.
            5 => {
                self.string()?;
                1
            }
            // Format: key and value.
            6 => {
                self.string()?;
                self.string()?;
                1
            }
            // A shared type; an XML element carries its tag name.
            7 => {
                match self.u8()? {
                    3 => {
                        self.string()?;
                    }
                    0..=6 | 9 | 15 => {}
                    t => return Err(format!("unknown type reference {t}")),
                }
                1
            }
            // Any values.
            8 => {
                let n = self.count(1)?;
                for _ in 0..n {
                    self.any(0)?;
                }
                n as u64
            }
            // A subdocument. yrs 0.28 never frees the store of a subdocument integrated into a
            // document (about 2.6 KiB each time such a document is dropped, as on every unload),
            // so a client could grow the server's memory without bound.
            9 => return Err("subdocuments are not supported".into()),
            c => return Err(format!("unknown content type {c}")),
        };
        Ok((len, parent))
    }
}

/// Scans a v1 update; see the module documentation for what it refuses.
pub(crate) fn scan(update: &[u8]) -> Result<Scan<'_>> {
    let mut r = Reader {
        buf: update,
        pos: 0,
    };
    let mut runs = Vec::new();
    let mut parents_by_id = false;
    for _ in 0..r.count(3)? {
        let structs = r.count(1)?;
        let client = r.client()?;
        let mut clock = u64::from(r.var_u32()?);
        // (first clock, first byte, structs) of the run being read.
        let mut run: Option<(u64, usize, u32)> = None;
        let mut close = |run: &mut Option<(u64, usize, u32)>, clock: u64, end_pos: usize| {
            if let Some((start, from, n)) = run.take() {
                runs.push(Run {
                    client,
                    clock: start as u32,
                    end: clock as u32,
                    structs: n,
                    bytes: &update[from..end_pos],
                });
            }
        };
        for _ in 0..structs {
            let from = r.pos;
            let info = r.u8()?;
            let len = match info {
                10 => {
                    let len = r.var_u32()?;
                    if len == 0 {
                        return Err("empty skip".into());
                    }
                    close(&mut run, clock, from);
                    clock += u64::from(len);
                    if clock > u64::from(u32::MAX) {
                        return Err("clock overflows 32 bits".into());
                    }
                    continue;
                }
                0 => {
                    let len = r.var_u32()?;
                    if len == 0 {
                        return Err("empty GC".into());
                    }
                    u64::from(len)
                }
                _ => {
                    let (len, parent) = r.item_and_parent(info)?;
                    parents_by_id |= parent.is_some();
                    len
                }
            };
            let (_, _, n) = run.get_or_insert((clock, from, 0));
            *n += 1;
            clock += len;
            if clock > u64::from(u32::MAX) {
                return Err("clock overflows 32 bits".into());
            }
        }
        close(&mut run, clock, r.pos);
    }
    // An encoder writes each client's structs once. Two versions of the same clocks in one
    // update (duplicate client sections) can only be a client reusing its ids with other
    // content, and yrs would keep one version or a mix depending on the order it meets them in.
    let mut spans: Vec<(u64, u32, u32)> = Vec::new();
    if runs.len() > 1 {
        spans.extend(runs.iter().map(|r| (r.client, r.clock, r.end)));
        spans.sort_unstable();
    }
    if let Some(w) = spans
        .windows(2)
        .find(|w| w[0].0 == w[1].0 && w[1].1 < w[0].2)
    {
        return Err(format!(
            "the update holds clocks {}..{} of client {} twice",
            w[1].1,
            w[0].2.min(w[1].2),
            w[0].0
        ));
    }
    let ds_from = r.pos;
    let mut deletes = false;
    for _ in 0..r.count(2)? {
        r.client()?;
        for _ in 0..r.count(2)? {
            let clock = r.var_u32()?;
            let len = r.var_u32()?;
            if clock.checked_add(len).is_none() {
                return Err("deleted range overflows 32 bits".into());
            }
            deletes |= len > 0;
        }
    }
    Ok(Scan {
        runs,
        delete_set: &update[ds_from..r.pos],
        deletes,
        parents_by_id,
    })
}

/// The first parent named by id in `runs` that is an item holding no shared type, as its client
/// and clock; `None` when every such parent is a shared type, deleted, or not known yet.
///
/// `document(client, clock)` says whether the document holds a shared type or a deleted item at
/// a clock it knows (`None` for a clock it does not know); other clocks are looked up in `runs`.
/// yrs 0.28 refuses a struct whose parent is text, say, but only when it reaches it, after it
/// integrated what came before in the same update: the document changed while the update was
/// refused. Honest updates only name shared types as parents (deleted ones being gone or
/// `Deleted` content in an encoding).
pub(crate) fn non_type_parent(
    runs: &[Run<'_>],
    document: impl Fn(u64, u32) -> Option<bool>,
) -> Option<(u64, u32)> {
    // (client, first clock, length, info) of every struct, and the parents named by id.
    let mut structs: Vec<(u64, u64, u64, u8)> = Vec::new();
    let mut parents: Vec<(u64, u32)> = Vec::new();
    for run in runs {
        let mut r = Reader {
            buf: run.bytes,
            pos: 0,
        };
        let mut clock = u64::from(run.clock);
        for _ in 0..run.structs {
            let info = r.u8().ok()?;
            let len = match info {
                0 => u64::from(r.var_u32().ok()?),
                _ => {
                    let (len, parent) = r.item_and_parent(info).ok()?;
                    parents.extend(parent);
                    len
                }
            };
            structs.push((run.client, clock, len, info));
            clock += len;
        }
    }
    structs.sort_unstable();
    parents.into_iter().find(|&(client, clock)| {
        if let Some(fits) = document(client, clock) {
            return !fits;
        }
        let at = u64::from(clock);
        let i = structs.partition_point(|s| (s.0, s.1) <= (client, at));
        match i.checked_sub(1).map(|i| structs[i]) {
            Some((c, start, len, info)) if c == client && at < start + len => {
                // A GC, deleted content, or a shared type at exactly that clock.
                !(info == 0 || info & 0x0f == 1 || (info & 0x0f == 7 && start == at))
            }
            _ => false,
        }
    })
}

/// The part of `run` that yrs integrates when the document already holds its client's clocks
/// below `known`, rewritten when yrs would place it inconsistently; `None` when it need not be.
///
/// yrs cuts the struct holding `known` there and links the rest after the document's item at
/// `known - 1`. A struct with an origin then takes its parent and key from that item, but yrs
/// 0.28 keeps the parent and key a struct without origins names itself. Those agree unless the
/// client reused its clocks with other content, and then the rest was linked into one type while
/// counted in the length of another (or under a key): deleting it later underflowed that length.
/// So when the struct holding `known` starts before it and names its parent, the run is rewritten
/// from that struct on, the struct naming the item at `known - 1` as its origin instead (its
/// content unchanged, the rest of the run as it was): yrs cuts it the same way and places the
/// rest where the document holds the clock before, as for any struct with an origin. For what a
/// client sends honestly this changes nothing, the struct's parent being that item's.
///
/// Returns the first clock of the rewritten run, its number of structs and its encoding.
pub(crate) fn with_origin_at(run: &Run<'_>, known: u32) -> Option<(u32, u32, Vec<u8>)> {
    let mut r = Reader {
        buf: run.bytes,
        pos: 0,
    };
    let mut clock = u64::from(run.clock);
    for i in 0..run.structs {
        let from = r.pos;
        let info = r.u8().ok()?;
        let len = match info {
            0 => u64::from(r.var_u32().ok()?),
            _ => r.item(info).ok()?,
        };
        if clock + len <= u64::from(known) {
            clock += len;
            continue;
        }
        // A GC, a struct with an origin, or one that starts where the document ends.
        if info == 0 || info & 0xc0 != 0 || clock >= u64::from(known) {
            return None;
        }
        // Past the parent, and the key of a map entry: the struct's content.
        let mut content = Reader {
            buf: run.bytes,
            pos: from + 1,
        };
        content.parent_and_key(info).ok()?;
        let rest = &run.bytes[content.pos..];
        let mut out = Vec::with_capacity(rest.len() + 16);
        out.push(0x80 | (info & 0x1f));
        write_var(&mut out, run.client);
        write_var(&mut out, u64::from(known - 1));
        out.extend_from_slice(rest);
        return Some((clock as u32, run.structs - i, out));
    }
    None
}

/// Checks a v1 state vector: a count that fits its bytes, 53-bit client ids, 32-bit clocks.
pub(crate) fn check_state_vector(sv: &[u8]) -> Result<()> {
    let mut r = Reader { buf: sv, pos: 0 };
    for _ in 0..r.count(2)? {
        r.client()?;
        r.var_u32()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Any, Array, ClientID, Doc, Map, ReadTxn, Text, Transact};

    #[test]
    fn scans_what_yrs_writes() {
        let doc = Doc::with_client_id(1 << 40);
        let text = doc.get_or_insert_text("t");
        let map = doc.get_or_insert_map("m");
        let array = doc.get_or_insert_array("a");
        let update = {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "héllo 👋");
            text.remove_range(&mut txn, 1, 2);
            map.insert(&mut txn, "n", 1.5);
            map.insert(
                &mut txn,
                "deep",
                Any::from(vec![Any::from(vec![Any::Null])]),
            );
            array.insert(&mut txn, 0, vec![1i64, 2, 3]);
            txn.encode_update_v1()
        };
        let scan = scan(&update).unwrap();
        assert_eq!(scan.runs.len(), 1);
        let run = scan.runs[0];
        assert_eq!((run.client, run.clock), (1 << 40, 0));
        let clock = doc.transact().state_vector().get(&ClientID::new(1 << 40));
        assert_eq!(run.end, clock);
        assert!(scan.deletes);
        let again = encode(&scan.runs, Some(scan.delete_set));
        assert_eq!(again, update);
    }

    #[test]
    fn refuses_what_yrs_mishandles() {
        let bad: [(&str, &[u8]); 5] = [
            ("client count", &[0xff, 0xff, 0xff, 0xff, 0x0f, 1, 1]),
            ("struct count", &[1, 0xff, 0xff, 0x03, 1, 0, 0, 0]),
            // A GC at clock 2^32 - 1 of length 4.
            ("clock", &[1, 1, 7, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 4, 0]),
            (
                "client id",
                &[
                    1, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0, 1, 0,
                ],
            ),
            (
                "deleted range",
                &[0, 1, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 2],
            ),
        ];
        for (what, update) in bad {
            assert!(scan(update).is_err(), "{what} accepted");
        }
        // One Any item in root "t" holding arrays nested `levels` deep.
        let nested = |levels: usize| {
            let mut u = vec![1, 1, 1, 0, 0x08, 1, 1, b't', 1];
            for _ in 0..levels {
                u.extend([117, 1]);
            }
            u.extend([126, 0]);
            u
        };
        assert!(scan(&nested(ANY_DEPTH_MAX)).is_ok());
        assert!(
            scan(&nested(ANY_DEPTH_MAX + 1)).is_err(),
            "deep value accepted"
        );
    }

    #[test]
    fn refuses_a_clients_clocks_written_twice() {
        // Two sections for client 1: GCs over clocks 0..3, then from `second`, 2 long.
        let update = |second: u8| [2, 1, 1, 0, 0, 3, 1, 1, second, 0, 2, 0];
        assert_eq!(
            scan(&update(2)).map(|_| ()),
            Err("the update holds clocks 2..3 of client 1 twice".to_string())
        );
        let apart = update(3);
        let runs = scan(&apart).unwrap().runs;
        assert_eq!(runs.len(), 2);
    }

    #[test]
    fn rewrites_a_struct_yrs_cuts_when_it_names_its_parent() {
        // Client 1: a GC over clocks 0..2, then "abc" under key "k" of root "m" (clocks 2..5).
        let update = [
            1, 2, 1, 0, 0, 2, 0x24, 1, 1, b'm', 1, b'k', 3, b'a', b'b', b'c', 0,
        ];
        let scan = scan(&update).unwrap();
        let run = scan.runs[0];
        // Cut at 3: the string, with origin (1, 2) instead of its parent and key.
        let content = [0x84, 1, 2, 3, b'a', b'b', b'c'];
        assert_eq!(with_origin_at(&run, 3), Some((2, 1, content.to_vec())));
        // Cut inside the GC, or where the string starts: nothing to rewrite.
        assert_eq!(with_origin_at(&run, 1), None);
        assert_eq!(with_origin_at(&run, 2), None);
        // A struct with an origin takes its parent from the document already.
        let with_origin = [1, 1, 1, 0, 0x84, 2, 0, 3, b'a', b'b', b'c', 0];
        let scan = super::scan(&with_origin).unwrap();
        assert_eq!(with_origin_at(&scan.runs[0], 1), None);
    }

    #[test]
    fn finds_a_parent_that_is_no_type() {
        // Client 9: a type in root "t" (clock 0), "ab" in root "t" (clocks 1..3), then "y" under
        // the clock named by `parent`.
        let update = |parent: u8| {
            [
                1, 3, 9, 0, 0x07, 1, 1, b't', 1, 0x04, 1, 1, b't', 2, b'a', b'b', 0x04, 0, 9,
                parent, 1, b'y', 0,
            ]
        };
        let unknown = |_: u64, _: u32| None;
        let ok = update(0);
        let scan = scan(&ok).unwrap();
        assert!(scan.parents_by_id);
        assert_eq!(non_type_parent(&scan.runs, unknown), None);
        let bad = update(2);
        let scan = super::scan(&bad).unwrap();
        assert_eq!(non_type_parent(&scan.runs, unknown), Some((9, 2)));
        // The document answers for the clocks it holds.
        assert_eq!(non_type_parent(&scan.runs, |_, _| Some(true)), None);
        assert_eq!(
            non_type_parent(&scan.runs, |_, _| Some(false)),
            Some((9, 2))
        );
        // Past the update: not known yet, it waits in yrs.
        let later = update(9);
        let scan = super::scan(&later).unwrap();
        assert_eq!(non_type_parent(&scan.runs, unknown), None);
    }

    #[test]
    fn refuses_subdocuments() {
        let doc = Doc::with_client_id(1);
        let map = doc.get_or_insert_map("m");
        let update = {
            let mut txn = doc.transact_mut();
            map.insert(&mut txn, "sub", Doc::new());
            txn.encode_update_v1()
        };
        assert_eq!(
            scan(&update).map(|_| ()),
            Err("subdocuments are not supported".to_string())
        );
    }
}

/// A value of `Any` content as the rules read it.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyValue {
    /// `undefined`.
    Undefined,
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number (integers, floats and big integers alike).
    Number(f64),
    /// A string.
    String(String),
    /// An array, an object or bytes.
    Other,
}

/// What an item holds, as the rules read it.
#[derive(Debug, Clone, PartialEq)]
pub enum StructContent {
    /// A garbage-collected range, or deleted content: it holds nothing.
    Gone,
    /// Text (UTF-16 units).
    String(String),
    /// An XML element with its tag.
    Element(String),
    /// An XML text.
    XmlText,
    /// Any other shared type, by its type reference (0 array, 1 map, 2 text, 4 XML fragment,
    /// 5 XML hook, 6 XML text, 9 weak link, 15 undefined).
    Type(u8),
    /// `Any` values.
    Values(Vec<AnyValue>),
    /// Binary, an embed or a formatting mark.
    Other,
}

/// Where an item's parent is named in an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Named {
    /// By origin (left, then right): the parent is the origin's.
    Origins(Option<(u64, u32)>, Option<(u64, u32)>),
    /// A root type by name.
    Root(String),
    /// A nested type by the id of the item holding it.
    Item((u64, u32)),
    /// None (a garbage-collected range).
    Nothing,
}

/// One struct of an update, decoded.
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    pub(crate) client: u64,
    pub(crate) clock: u32,
    pub(crate) len: u32,
    pub(crate) named: Named,
    /// The map key (`parent_sub`) it names, when it names its parent.
    pub(crate) key: Option<String>,
    pub(crate) content: StructContent,
}

/// A deleted range: client, first clock, length.
pub(crate) type DeletedRange = (u64, u32, u32);

/// Every struct of a scanned update, decoded (skips left out), and its deleted ranges.
pub(crate) fn decode_structs(scan: &Scan<'_>) -> Result<(Vec<Decoded>, Vec<DeletedRange>)> {
    let mut out = Vec::new();
    for run in &scan.runs {
        let mut r = Reader {
            buf: run.bytes,
            pos: 0,
        };
        let mut clock = run.clock;
        for _ in 0..run.structs {
            let info = r.u8()?;
            let d = match info {
                0 => {
                    let len = r.var_u32()?;
                    Decoded {
                        client: run.client,
                        clock,
                        len,
                        named: Named::Nothing,
                        key: None,
                        content: StructContent::Gone,
                    }
                }
                _ => r.decoded(run.client, clock, info)?,
            };
            clock = clock.saturating_add(d.len);
            if d.len > 0 {
                out.push(d);
            }
        }
    }
    let mut deleted = Vec::new();
    let mut r = Reader {
        buf: scan.delete_set,
        pos: 0,
    };
    for _ in 0..r.count(2)? {
        let client = r.client()?;
        for _ in 0..r.count(2)? {
            let clock = r.var_u32()?;
            let len = r.var_u32()?;
            if len > 0 {
                deleted.push((client, clock, len));
            }
        }
    }
    Ok((out, deleted))
}

impl Reader<'_> {
    fn decoded(&mut self, client: u64, clock: u32, info: u8) -> Result<Decoded> {
        let origin = if info & 0x80 != 0 {
            Some(self.id()?)
        } else {
            None
        };
        let right = if info & 0x40 != 0 {
            Some(self.id()?)
        } else {
            None
        };
        let mut key = None;
        let named = if info & 0xc0 == 0 {
            let named = if self.var_u32()? == 1 {
                Named::Root(self.string()?.to_string())
            } else {
                Named::Item(self.id()?)
            };
            if info & 0x20 != 0 {
                key = Some(self.string()?.to_string());
            }
            named
        } else {
            Named::Origins(origin, right)
        };
        let (len, content) = match info & 0x0f {
            1 => (self.var_u32()?, StructContent::Gone),
            2 => return Err("legacy JSON content is not supported".into()),
            3 => {
                self.var_bytes()?;
                (1, StructContent::Other)
            }
            4 => {
                let s = self.string()?;
                (
                    s.encode_utf16().count() as u32,
                    StructContent::String(s.to_string()),
                )
            }
            5 => {
                self.string()?;
                (1, StructContent::Other)
            }
            6 => {
                self.string()?;
                self.string()?;
                (1, StructContent::Other)
            }
            7 => {
                let content = match self.u8()? {
                    3 => StructContent::Element(self.string()?.to_string()),
                    6 => StructContent::XmlText,
                    t @ (0..=6 | 9 | 15) => StructContent::Type(t),
                    t => return Err(format!("unknown type reference {t}")),
                };
                (1, content)
            }
            8 => {
                let n = self.count(1)?;
                let mut values = Vec::with_capacity(n);
                for _ in 0..n {
                    values.push(self.any_value(0)?);
                }
                (n as u32, StructContent::Values(values))
            }
            9 => return Err("subdocuments are not supported".into()),
            c => return Err(format!("unknown content type {c}")),
        };
        Ok(Decoded {
            client,
            clock,
            len,
            named,
            key,
            content,
        })
    }

    fn any_value(&mut self, depth: usize) -> Result<AnyValue> {
        let from = self.pos;
        let tag = self.u8()?;
        let value = match tag {
            127 => AnyValue::Undefined,
            126 => AnyValue::Null,
            121 => AnyValue::Bool(false),
            120 => AnyValue::Bool(true),
            125 => {
                // lib0's signed varint: sign in bit 6 of the first byte.
                let first = self.u8()?;
                let negative = first & 0x40 != 0;
                let mut value = u64::from(first & 0x3f);
                let mut shift = 6;
                let mut b = first;
                while b & 0x80 != 0 {
                    b = self.u8()?;
                    if shift > 63 {
                        return Err("signed integer overflows 64 bits".into());
                    }
                    value |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
                    shift += 7;
                }
                let v = value as f64;
                AnyValue::Number(if negative { -v } else { v })
            }
            124 => {
                let b = self.bytes(4)?;
                AnyValue::Number(f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]])))
            }
            123 => {
                let b: [u8; 8] = self.bytes(8)?.try_into().map_err(|_| "short float")?;
                AnyValue::Number(f64::from_be_bytes(b))
            }
            122 => {
                let b: [u8; 8] = self.bytes(8)?.try_into().map_err(|_| "short integer")?;
                AnyValue::Number(i64::from_be_bytes(b) as f64)
            }
            119 => AnyValue::String(self.string()?.to_string()),
            _ => {
                // Arrays, objects and bytes: validated as the scan does, read as `Other`.
                self.pos = from;
                self.any(depth)?;
                AnyValue::Other
            }
        };
        Ok(value)
    }
}
