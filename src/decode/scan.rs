//! Reading a CloudTrail event straight from the escaped `message` string of a CloudWatch Logs
//! envelope: the fields the engine needs, borrowed from the gunzipped bytes, with no unescaping
//! and no parse of the rest of the event.
//!
//! In the envelope, each event is one JSON string: `{\"eventVersion\":\"1.08\",...}`. An inner
//! (event) quote is an outer escape `\"`; a quote inside an inner string is `\\\"`. The scanner
//! works as simdjson's first stage does, 64 bytes at a time: bit masks of backslashes, quotes and
//! brackets (SSE2), the outer escapes from the backslash runs (simdjson's branch-free carry
//! trick), the inner escapes from those (a scalar pass, only in blocks that hold an inner
//! backslash), the inner strings from a prefix XOR of the real inner quotes, and from them the
//! brackets outside strings; this first pass runs over the whole message in one tight loop, into
//! a buffer of block masks reused from message to message ([`Index`]). A walker then reads, from
//! those masks, the objects it needs (the top level, `userIdentity`, `sessionContext`, its
//! `attributes` and `sessionIssuer`) key by key, and skips every other value by counting brackets
//! a block at a time (`requestParameters` and `responseElements`, most of an event's bytes, cost
//! a few instructions per 64 bytes).
//!
//! What it checks: the structure (keys, colons, commas, strings closed, brackets balanced before
//! the message ends), no control characters, no outer escape other than `\"` and `\\`, no
//! duplicate key among those serde would reject, and the JSON type of every field it reads. It
//! does not check the grammar of values it skips (a number's digits, brackets of the right
//! kind): a message that only a full parser would reject there is read as CloudTrail would never
//! write it. Anything else it does not expect (whitespace between tokens, an escape inside a
//! field it reads, a field of another type) makes it give up on that message ([`Bail`]), and the
//! caller unescapes and parses that message in full, so the outcome is the full parser's.

use std::borrow::Cow;

use crate::event::{
    CloudTrailEvent, SessionAttributes, SessionContext, SessionIssuer, UserIdentity,
};

/// The scanner left the message to the full parser. Not a verdict on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bail;

/// Bit `i` of each mask is byte `i` of a 64-byte block.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Classes {
    backslash: u64,
    quote: u64,
    /// `{` and `[`.
    open: u64,
    /// `}` and `]`.
    close: u64,
    /// Bytes below 0x20.
    control: u64,
}

/// The classes of 64 bytes: 32 at a time with AVX2 where the CPU has it (checked once, then a
/// cached flag), else 16 at a time with SSE2 (part of every x86-64 CPU).
#[cfg(target_arch = "x86_64")]
#[inline]
fn classify(b: &[u8; 64]) -> Classes {
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        unsafe { classify_avx2(b) }
    } else {
        classify_sse2(b)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn classify_avx2(b: &[u8; 64]) -> Classes {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_min_epu8, _mm256_movemask_epi8,
        _mm256_or_si256, _mm256_set1_epi8,
    };
    // SAFETY: both loads read 32 bytes within `b` (offsets 0 and 32 of 64), unaligned loads
    // allowed; AVX2 is enabled for this function, whose callers check the CPU has it.
    let (lo, hi) = unsafe {
        (
            _mm256_loadu_si256(b.as_ptr().cast::<__m256i>()),
            _mm256_loadu_si256(b.as_ptr().add(32).cast::<__m256i>()),
        )
    };
    macro_rules! mask {
        (|$v:ident| $eq:expr) => {{
            let lo_bits = {
                let $v = lo;
                _mm256_movemask_epi8($eq)
            };
            let hi_bits = {
                let $v = hi;
                _mm256_movemask_epi8($eq)
            };
            u64::from(lo_bits as u32) | u64::from(hi_bits as u32) << 32
        }};
    }
    let case = _mm256_set1_epi8(0x20);
    // The same classes as [`classify_sse2`]: see there.
    Classes {
        backslash: mask!(|v| _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8))),
        quote: mask!(|v| _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8))),
        open: mask!(|v| _mm256_cmpeq_epi8(_mm256_or_si256(v, case), _mm256_set1_epi8(0x7b))),
        close: mask!(|v| _mm256_cmpeq_epi8(_mm256_or_si256(v, case), _mm256_set1_epi8(0x7d))),
        control: mask!(|v| _mm256_cmpeq_epi8(_mm256_min_epu8(v, _mm256_set1_epi8(0x1f)), v)),
    }
}

/// [`classify`] with SSE2.
#[cfg(target_arch = "x86_64")]
fn classify_sse2(b: &[u8; 64]) -> Classes {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    let mut c = Classes::default();
    // SAFETY: SSE2 is in the x86-64 baseline, so these intrinsics are always available; every
    // load reads 16 bytes within `b` (offsets 0, 16, 32, 48 of 64), unaligned loads allowed.
    unsafe {
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let quote = _mm_set1_epi8(b'"' as i8);
        let case = _mm_set1_epi8(0x20);
        // `{` 0x7b and `[` 0x5b differ only in bit 5, as do `}` 0x7d and `]` 0x5d.
        let open = _mm_set1_epi8(0x7b);
        let close = _mm_set1_epi8(0x7d);
        let ctl = _mm_set1_epi8(0x1f);
        for k in 0..4 {
            let v = _mm_loadu_si128(b.as_ptr().add(16 * k).cast());
            let folded = _mm_or_si128(v, case);
            let bit = |m: i32| u64::from(m as u16) << (16 * k);
            c.backslash |= bit(_mm_movemask_epi8(_mm_cmpeq_epi8(v, backslash)));
            c.quote |= bit(_mm_movemask_epi8(_mm_cmpeq_epi8(v, quote)));
            c.open |= bit(_mm_movemask_epi8(_mm_cmpeq_epi8(folded, open)));
            c.close |= bit(_mm_movemask_epi8(_mm_cmpeq_epi8(folded, close)));
            // v <= 0x1f (unsigned) exactly when min(v, 0x1f) == v.
            c.control |= bit(_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(v, ctl), v)));
        }
    }
    c
}

#[cfg(not(target_arch = "x86_64"))]
fn classify(b: &[u8; 64]) -> Classes {
    classify_scalar(b)
}

/// [`classify`] a byte at a time: the portable version, and the reference in tests.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn classify_scalar(b: &[u8; 64]) -> Classes {
    let mut c = Classes::default();
    for (i, &x) in b.iter().enumerate() {
        let bit = 1u64 << i;
        match x {
            b'\\' => c.backslash |= bit,
            b'"' => c.quote |= bit,
            b'{' | b'[' => c.open |= bit,
            b'}' | b']' => c.close |= bit,
            0..=0x1f => c.control |= bit,
            _ => {}
        }
    }
    c
}

/// The characters escaped by a backslash (the one after an odd run of backslashes), given the
/// block's backslashes; `carry` is 1 when the previous block ended in an unfinished escape.
/// simdjson's branch-free version (`json_escape_scanner`).
fn find_escaped(backslash: u64, carry: &mut u64) -> u64 {
    const EVEN: u64 = 0x5555_5555_5555_5555;
    let backslash = backslash & !*carry;
    let follows_escape = (backslash << 1) | *carry;
    let odd_starts = backslash & !EVEN & !follows_escape;
    let (even_starts, overflow) = odd_starts.overflowing_add(backslash);
    *carry = u64::from(overflow);
    let invert = even_starts << 1;
    (EVEN ^ invert) & follows_escape
}

/// Inner escapes: over the bytes that remain once the outer escapes are undone (`keep`: every
/// byte but an escaping backslash), the byte after an unescaped inner backslash. Scalar: only
/// blocks with an inner backslash (or one pending from the block before) come here.
fn inner_escaped(keep: u64, inner_backslash: u64, pending: &mut bool) -> u64 {
    let mut escaped = 0;
    let mut bits = keep;
    while bits != 0 {
        let bit = bits & bits.wrapping_neg();
        bits ^= bit;
        if *pending {
            escaped |= bit;
            *pending = false;
        } else if inner_backslash & bit != 0 {
            *pending = true;
        }
    }
    escaped
}

/// Bit `i` is the XOR of bits `0..=i`.
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// [`prefix_xor`] as one carry-less multiplication by all ones (simdjson's way).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "pclmulqdq")]
#[inline]
fn prefix_xor_clmul(x: u64) -> u64 {
    use std::arch::x86_64::{_mm_clmulepi64_si128, _mm_cvtsi128_si64, _mm_set_epi64x};
    let v = _mm_clmulepi64_si128(_mm_set_epi64x(0, x as i64), _mm_set_epi64x(0, -1), 0);
    _mm_cvtsi128_si64(v) as u64
}

/// The lowest set bit and all above it cleared; all ones if `x` is 0.
fn below_first(x: u64) -> u64 {
    if x == 0 {
        !0
    } else {
        (x & x.wrapping_neg()) - 1
    }
}

/// What the walker needs of one block, limited to the bytes before the message's end.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Block {
    /// Real inner quotes (not escaped inside an inner string).
    quote: u64,
    /// Brackets outside inner strings.
    open: u64,
    close: u64,
    /// Backslashes of the event's text (escaped ones in the message).
    inner_backslash: u64,
}

/// The blocks of one message, computed in one tight pass before the walk (a buffer reused from
/// message to message: no allocation once it has grown to the longest message).
#[derive(Debug, Default)]
pub(crate) struct Index {
    blocks: Vec<Block>,
}

/// Classifies the message whose content starts at `start` (blocks start at its first byte)
/// into `index`; returns the position of its closing quote. Gives up where the walk would:
/// no closing quote, a control character or an outer escape other than `\"` and `\\` in it.
/// `AVX2`: classify with AVX2 (only in code compiled for it: [`read_event_into`]).
#[inline(always)]
fn index<const AVX2: bool>(buf: &[u8], start: usize, index: &mut Index) -> Result<usize, Bail> {
    index.blocks.clear();
    let (mut outer_carry, mut inner_pending, mut in_string) = (0u64, false, 0u64);
    let mut base = start;
    while base < buf.len() {
        let mut pad = [0u8; 64];
        let (bytes, valid): (&[u8; 64], u64) = match buf.get(base..base + 64) {
            Some(b) => (b.try_into().expect("64 bytes"), !0),
            None => {
                let rest = &buf[base..];
                pad[..rest.len()].copy_from_slice(rest);
                (&pad, (1u64 << rest.len()) - 1)
            }
        };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `AVX2` is only set in code compiled for it, which runs where the CPU has it
        // ([`read_event_into`]).
        let c = if AVX2 {
            unsafe { classify_avx2(bytes) }
        } else {
            classify_sse2(bytes)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let c = classify(bytes);
        let escaped = find_escaped(c.backslash, &mut outer_carry);
        let end = c.quote & !escaped & valid;
        let before = below_first(end) & valid;
        // Within the message: no control character, no outer escape but \" and \\.
        if (c.control | (escaped & !(c.quote | c.backslash))) & before != 0 {
            return Err(Bail);
        }
        let inner_backslash = c.backslash & escaped;
        let mut quote = c.quote & escaped;
        if inner_backslash != 0 || inner_pending {
            let keep = !(c.backslash & !escaped);
            quote &= !inner_escaped(keep, inner_backslash, &mut inner_pending);
        }
        #[cfg(target_arch = "x86_64")]
        let strings = if AVX2 {
            // SAFETY: as for `classify_avx2` (PCLMULQDQ is among the features checked).
            unsafe { prefix_xor_clmul(quote) }
        } else {
            prefix_xor(quote)
        } ^ in_string;
        #[cfg(not(target_arch = "x86_64"))]
        let strings = prefix_xor(quote) ^ in_string;
        in_string = ((strings as i64) >> 63) as u64;
        index.blocks.push(Block {
            quote: quote & before,
            open: c.open & !strings & before,
            close: c.close & !strings & before,
            inner_backslash: inner_backslash & before,
        });
        if end != 0 {
            return Ok(base + end.trailing_zeros() as usize);
        }
        base += 64;
    }
    Err(Bail)
}

/// The blocks of one message, as the walker reads them.
struct Scanner<'a> {
    blocks: &'a [Block],
    /// The message's first byte (where its first block starts).
    start: usize,
}

impl Scanner<'_> {
    /// The block holding `pos` and `pos`'s bit in it; past the message's end, none.
    #[inline(always)]
    fn at(&self, pos: usize) -> Result<(usize, &Block, u32), Bail> {
        // Before the start wraps to a huge offset: no block.
        let rel = pos.wrapping_sub(self.start);
        let k = rel >> 6;
        let b = self.blocks.get(k).ok_or(Bail)?;
        Ok((self.start + (k << 6), b, (rel & 63) as u32))
    }

    /// The next real inner quote at or after `from`; gives up if the message ends first, or
    /// (`plain`) if an inner backslash comes first: the string from `from` has an escape.
    #[inline(always)]
    fn next_quote(&self, from: usize, plain: bool) -> Result<usize, Bail> {
        let (mut base, _, bit) = self.at(from)?;
        let mut live = !0u64 << bit;
        let mut k = (base - self.start) >> 6;
        loop {
            let b = self.blocks.get(k).ok_or(Bail)?;
            let m = b.quote & live;
            let escapes = if plain { b.inner_backslash & live } else { 0 };
            if m != 0 {
                let bit = m.trailing_zeros();
                if escapes & ((1u64 << bit) - 1) != 0 {
                    return Err(Bail);
                }
                return Ok(base + bit as usize);
            }
            if escapes != 0 {
                return Err(Bail);
            }
            live = !0;
            k += 1;
            base += 64;
        }
    }

    /// Skips the rest of an object or array whose first byte after its opening bracket is at
    /// `from`; returns the position after its closing bracket.
    #[inline(always)]
    fn skip_container(&self, from: usize) -> Result<usize, Bail> {
        let (mut base, _, bit) = self.at(from)?;
        let mut live = !0u64 << bit;
        let mut k = (base - self.start) >> 6;
        let mut depth: u32 = 1;
        loop {
            let b = self.blocks.get(k).ok_or(Bail)?;
            let (open, close) = (b.open & live, b.close & live);
            if close.count_ones() < depth {
                depth += open.count_ones();
                depth -= close.count_ones();
            } else {
                let mut bits = open | close;
                while bits != 0 {
                    let bit = bits.trailing_zeros();
                    bits &= bits - 1;
                    if open >> bit & 1 != 0 {
                        depth += 1;
                    } else {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(base + bit as usize + 1);
                        }
                    }
                }
            }
            live = !0;
            k += 1;
            base += 64;
        }
    }
}

/// A key as the walker read it: its text and its [`tag`].
#[derive(Clone, Copy)]
struct Key<'a> {
    text: &'a str,
    tag: u64,
}

/// A key's length (low byte, 255 for 255 and more) and first seven bytes: [`pick`] compares these words before it
/// compares texts, so that a key costs one comparison per field it is not.
const fn tag(b: &[u8]) -> u64 {
    let mut t = if b.len() < 255 { b.len() as u64 } else { 255 };
    let mut i = 0;
    while i < b.len() && i < 7 {
        t |= (b[i] as u64) << (8 * (i + 1));
        i += 1;
    }
    t
}

/// Which arm a [`Key`] takes: `pick!(key, { "name" => arm, ... _ => other })`, as `match` on
/// its text would, comparing [`tag`] words first (a key of up to seven bytes is its tag).
macro_rules! pick {
    ($key:expr, { $($lit:literal => $arm:expr,)* _ => $other:expr $(,)? }) => {{
        let k: Key<'_> = $key;
        $(
            if k.tag == const { tag($lit.as_bytes()) }
                && ($lit.len() <= 7 || k.text.as_bytes() == $lit.as_bytes())
            {
                $arm
            } else
        )* {
            $other
        }
    }};
}

/// Where an object's walk is: at a key (and the position of its value), or past its `}`.
enum Next<'a> {
    Key(Key<'a>, usize),
    End(usize),
}

/// Walks the object whose `{` is at `open` with walker `w`: for each key, `body` (with `key`
/// and `v`, the position of its value) gives the position after the value; the whole is the
/// position after the object's `}`. A loop, not a closure, so that the walk compiles into the
/// function that calls it (with its CPU features, see [`read_event_into`]); `?` in `body`
/// returns from that function.
macro_rules! each_key {
    ($walk:expr, $open:expr, |$w:ident, $key:ident, $v:ident| $body:expr) => {{
        let $w = &mut *$walk;
        let mut next = $w.first_key($open)?;
        loop {
            let ($key, $v) = match next {
                Next::Key(k, v) => (k, v),
                Next::End(end) => break end,
            };
            let after: usize = $body;
            next = $w.next_key(after)?;
        }
    }};
}

/// The walker: the message's blocks and its text (valid UTF-8, checked by the caller).
struct Walk<'a, 'i> {
    s: Scanner<'i>,
    text: &'a str,
}

impl<'a> Walk<'a, '_> {
    #[inline(always)]
    fn byte(&self, i: usize) -> Option<u8> {
        self.text.as_bytes().get(i).copied()
    }

    /// The key at `i` (a backslash and a quote: an inner string) and the position of its value.
    #[inline(always)]
    fn key(&mut self, i: usize) -> Result<(Key<'a>, usize), Bail> {
        if self.byte(i) != Some(b'\\') || self.byte(i + 1) != Some(b'"') {
            return Err(Bail);
        }
        // An escaped key might spell a field the walker reads: the full parser decides.
        let close = self.s.next_quote(i + 2, true)?;
        if self.byte(close + 1) != Some(b':') {
            return Err(Bail);
        }
        let text = self.slice(i + 2, close - 1);
        let len = text.len();
        // The tag from one load of 8 bytes where the text has them (it does but at its end).
        let tag = match self.text.as_bytes().get(i + 2..i + 10) {
            Some(w) => {
                let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
                let n = len.min(7);
                (w << 8) & (((1u64 << (8 * n)) - 1) << 8) | len.min(255) as u64
            }
            None => tag(text.as_bytes()),
        };
        Ok((Key { text, tag }, close + 2))
    }

    /// The text from `a` to `b`, positions the scanner found at ASCII bytes (a quote, a
    /// backslash) or just after them.
    #[inline(always)]
    fn slice(&self, a: usize, b: usize) -> &'a str {
        let bytes = &self.text.as_bytes()[a..b];
        debug_assert!(self.text.is_char_boundary(a) && self.text.is_char_boundary(b));
        // SAFETY: `text` is valid UTF-8 and `a` and `b` are char boundaries: each is the
        // position of an ASCII byte or the one after it (the walker's callers pass only such
        // positions), and an ASCII byte never sits inside a multi-byte character.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// The first key of the object whose `{` is at `open`, or the end of an empty one.
    #[inline(always)]
    fn first_key(&mut self, open: usize) -> Result<Next<'a>, Bail> {
        if self.byte(open + 1) == Some(b'}') {
            return Ok(Next::End(open + 2));
        }
        self.key(open + 1).map(|(k, v)| Next::Key(k, v))
    }

    /// After a value ending at `after`: the next key, or the end of the object.
    #[inline(always)]
    fn next_key(&mut self, after: usize) -> Result<Next<'a>, Bail> {
        match self.byte(after) {
            Some(b',') => self.key(after + 1).map(|(k, v)| Next::Key(k, v)),
            Some(b'}') => Ok(Next::End(after + 1)),
            _ => Err(Bail),
        }
    }

    /// A string (without escapes) or `null` at `v`, and the position after it.
    #[inline(always)]
    fn string(&mut self, v: usize) -> Result<(Option<&'a str>, usize), Bail> {
        match self.byte(v) {
            Some(b'\\') if self.byte(v + 1) == Some(b'"') => {
                let close = self.s.next_quote(v + 2, true)?;
                Ok((Some(self.slice(v + 2, close - 1)), close + 1))
            }
            Some(b'n') if self.text.as_bytes()[v..].starts_with(b"null") => Ok((None, v + 4)),
            _ => Err(Bail),
        }
    }

    /// Reads a string field into `slot` (a second occurrence is a duplicate field).
    #[inline(always)]
    fn field(
        &mut self,
        v: usize,
        slot: &mut Option<Cow<'a, str>>,
        seen: &mut u32,
        bit: u32,
    ) -> Result<usize, Bail> {
        once(seen, bit)?;
        let (s, after) = self.string(v)?;
        *slot = s.map(Cow::Borrowed);
        Ok(after)
    }

    /// A literal (number, `true`, `false`, `null`) at `v`: the position after it.
    #[inline(always)]
    fn literal(&self, v: usize) -> Result<usize, Bail> {
        let b = self.text.as_bytes();
        let mut i = v;
        while let Some(&c) = b.get(i) {
            match c {
                b',' | b'}' | b']' => break,
                b'\\' | b'"' | b'{' | b'[' => return Err(Bail),
                _ => i += 1,
            }
        }
        if i == v || i == b.len() {
            return Err(Bail);
        }
        Ok(i)
    }

    /// Skips any value at `v`; returns the position after it.
    #[inline(always)]
    fn skip(&mut self, v: usize) -> Result<usize, Bail> {
        match self.byte(v) {
            Some(b'\\') if self.byte(v + 1) == Some(b'"') => {
                Ok(self.s.next_quote(v + 2, false)? + 1)
            }
            Some(b'{' | b'[') => self.s.skip_container(v + 1),
            Some(_) => self.literal(v),
            None => Err(Bail),
        }
    }

    /// An object field (`sessionContext`, ...) at `v`, seen once: `Ok(Some(v))` for an
    /// object (its `{` at `v`), `Ok(None)` for `null` (4 bytes).
    #[inline(always)]
    fn object_or_null(&self, v: usize, seen: &mut u32, bit: u32) -> Result<Option<usize>, Bail> {
        once(seen, bit)?;
        match self.byte(v) {
            Some(b'{') => Ok(Some(v)),
            Some(b'n') if self.text.as_bytes()[v..].starts_with(b"null") => Ok(None),
            _ => Err(Bail),
        }
    }

    #[inline(always)]
    fn user_identity(&mut self, open: usize, u: &mut UserIdentity<'a>) -> Result<usize, Bail> {
        let mut seen = 0;
        Ok(each_key!(self, open, |w, key, v| pick!(key, {
            "type" => w.field(v, &mut u.identity_type, &mut seen, 0)?,
            "principalId" => w.field(v, &mut u.principal_id, &mut seen, 1)?,
            "arn" => w.field(v, &mut u.arn, &mut seen, 2)?,
            "accountId" => w.field(v, &mut u.account_id, &mut seen, 3)?,
            "accessKeyId" => w.field(v, &mut u.access_key_id, &mut seen, 4)?,
            "userName" => w.field(v, &mut u.user_name, &mut seen, 5)?,
            "invokedBy" => w.field(v, &mut u.invoked_by, &mut seen, 6)?,
            "sessionContext" => match w.object_or_null(v, &mut seen, 7)? {
                Some(open) => {
                    let mut c = SessionContext::default();
                    let after = w.session_context(open, &mut c)?;
                    u.session_context = Some(c);
                    after
                }
                None => v + 4,
            },
            _ => w.skip(v)?,
        })))
    }

    #[inline(always)]
    fn session_context(&mut self, open: usize, c: &mut SessionContext<'a>) -> Result<usize, Bail> {
        let mut seen = 0;
        Ok(each_key!(self, open, |w, key, v| pick!(key, {
            "attributes" => match w.object_or_null(v, &mut seen, 0)? {
                Some(open) => {
                    let mut a = SessionAttributes::default();
                    let mut seen = 0;
                    let after = each_key!(w, open, |w, key, v| pick!(key, {
                        "creationDate" => w.field(v, &mut a.creation_date, &mut seen, 0)?,
                        _ => w.skip(v)?,
                    }));
                    c.attributes = Some(a);
                    after
                }
                None => v + 4,
            },
            "sessionIssuer" => match w.object_or_null(v, &mut seen, 1)? {
                Some(open) => {
                    let mut i = SessionIssuer::default();
                    let mut seen = 0;
                    let after = each_key!(w, open, |w, key, v| pick!(key, {
                        "type" => w.field(v, &mut i.issuer_type, &mut seen, 0)?,
                        "arn" => w.field(v, &mut i.arn, &mut seen, 1)?,
                        "userName" => w.field(v, &mut i.user_name, &mut seen, 2)?,
                        _ => w.skip(v)?,
                    }));
                    c.session_issuer = Some(i);
                    after
                }
                None => v + 4,
            },
            "ec2RoleDelivery" => w.field(v, &mut c.ec2_role_delivery, &mut seen, 2)?,
            "sourceIdentity" => w.field(v, &mut c.source_identity, &mut seen, 3)?,
            _ => w.skip(v)?,
        })))
    }

    /// `sessionCredentialFromConsole`: a boolean, a string (`"true"` in any case is true) or
    /// null (false), as [`CloudTrailEvent`]'s lenient reading has it.
    #[inline(always)]
    fn lenient_bool(&mut self, v: usize) -> Result<(bool, usize), Bail> {
        let b = &self.text.as_bytes()[v..];
        if b.starts_with(b"true") {
            return Ok((true, v + 4));
        }
        if b.starts_with(b"false") {
            return Ok((false, v + 5));
        }
        let (s, after) = self.string(v)?;
        Ok((s.is_some_and(|s| s.eq_ignore_ascii_case("true")), after))
    }
}

fn once(seen: &mut u32, bit: u32) -> Result<(), Bail> {
    if *seen >> bit & 1 != 0 {
        return Err(Bail);
    }
    *seen |= 1 << bit;
    Ok(())
}

/// [`read_event_into`] into a new event, for tests.
#[cfg(test)]
pub(crate) fn read_event(text: &str, start: usize) -> Result<(CloudTrailEvent<'_>, usize), Bail> {
    let mut ev = CloudTrailEvent::default();
    let end = read_event_into(text, start, &mut ev, &mut Index::default())?;
    Ok((ev, end))
}

/// Reads the event whose escaped text starts at `start` in `text` (just after the message's
/// opening quote) into `ev`, a default event (partly filled when it gives up), so that a caller
/// can read into a slot of its own buffer without moving the event; `idx` is a buffer for the
/// message's blocks, reused from call to call. Returns the position of the message's closing
/// quote. The event's `requestParameters` and `responseElements` are not read (`None`): a
/// caller that needs them parses the message in full (see
/// [`crate::engine::reads_whole_event`]).
pub(crate) fn read_event_into<'a>(
    text: &'a str,
    start: usize,
    ev: &mut CloudTrailEvent<'a>,
    idx: &mut Index,
) -> Result<usize, Bail> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("popcnt")
        && std::arch::is_x86_feature_detected!("bmi1")
        && std::arch::is_x86_feature_detected!("pclmulqdq")
    {
        // SAFETY: the CPU has the features `read_avx2` is compiled for, checked just above.
        return unsafe { read_avx2(text, start, ev, idx) };
    }
    read_with::<false>(text, start, ev, idx)
}

/// The whole read compiled for AVX2, POPCNT, BMI1 and PCLMULQDQ (its functions are inlined
/// here), so that the block classes, prefix XORs, bit counts and bit scans are single
/// instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt,bmi1,pclmulqdq")]
fn read_avx2<'a>(
    text: &'a str,
    start: usize,
    ev: &mut CloudTrailEvent<'a>,
    idx: &mut Index,
) -> Result<usize, Bail> {
    read_with::<true>(text, start, ev, idx)
}

/// Classifies the message, then walks its blocks.
#[inline(always)]
fn read_with<'a, const AVX2: bool>(
    text: &'a str,
    start: usize,
    ev: &mut CloudTrailEvent<'a>,
    idx: &mut Index,
) -> Result<usize, Bail> {
    if text.as_bytes().get(start) != Some(&b'{') {
        return Err(Bail);
    }
    let end = index::<AVX2>(text.as_bytes(), start, idx)?;
    let mut w = Walk {
        s: Scanner {
            blocks: &idx.blocks,
            start,
        },
        text,
    };
    let mut seen = 0u32;
    let after = each_key!(&mut w, start, |w, key, v| pick!(key, {
        "eventID" => w.field(v, &mut ev.event_id, &mut seen, 0)?,
        "eventTime" => w.field(v, &mut ev.event_time, &mut seen, 1)?,
        "eventName" => w.field(v, &mut ev.event_name, &mut seen, 2)?,
        "eventSource" => w.field(v, &mut ev.event_source, &mut seen, 3)?,
        "eventType" => w.field(v, &mut ev.event_type, &mut seen, 4)?,
        "awsRegion" => w.field(v, &mut ev.aws_region, &mut seen, 5)?,
        "sourceIPAddress" => w.field(v, &mut ev.source_ip_address, &mut seen, 6)?,
        "userAgent" => w.field(v, &mut ev.user_agent, &mut seen, 7)?,
        "errorCode" => w.field(v, &mut ev.error_code, &mut seen, 8)?,
        "errorMessage" => w.field(v, &mut ev.error_message, &mut seen, 9)?,
        "recipientAccountId" => w.field(v, &mut ev.recipient_account_id, &mut seen, 10)?,
        "vpcEndpointId" => w.field(v, &mut ev.vpc_endpoint_id, &mut seen, 11)?,
        "vpcEndpointAccountId" => w.field(v, &mut ev.vpc_endpoint_account_id, &mut seen, 12)?,
        "sessionCredentialFromConsole" => {
            once(&mut seen, 13)?;
            let (b, after) = w.lenient_bool(v)?;
            ev.session_credential_from_console = b;
            after
        },
        "userIdentity" => {
            once(&mut seen, 14)?;
            if w.byte(v) != Some(b'{') {
                return Err(Bail);
            }
            w.user_identity(v, &mut ev.user_identity)?
        },
        "requestParameters" => {
            once(&mut seen, 15)?;
            w.skip(v)?
        },
        "responseElements" => {
            once(&mut seen, 16)?;
            w.skip(v)?
        },
        _ => w.skip(v)?,
    }));
    // The event's `}` is the message's last byte: the next one is its closing quote.
    if after != end {
        return Err(Bail);
    }
    Ok(end)
}

/// The position of the closing quote of the JSON string whose content starts at `start`, for a
/// message the walker gave up on (the outer escapes alone decide where it ends).
pub(crate) fn string_end(buf: &[u8], start: usize) -> Option<usize> {
    let mut carry = 0u64;
    let mut base = start;
    while base < buf.len() {
        let mut pad = [0u8; 64];
        let bytes: &[u8; 64] = match buf.get(base..base + 64) {
            Some(b) => b.try_into().expect("64 bytes"),
            None => {
                let rest = &buf[base..];
                pad[..rest.len()].copy_from_slice(rest);
                &pad
            }
        };
        let c = classify(bytes);
        let end = c.quote & !find_escaped(c.backslash, &mut carry);
        if end != 0 {
            let at = base + end.trailing_zeros() as usize;
            return (at < buf.len()).then_some(at);
        }
        base += 64;
    }
    None
}

/// The fields the walker reads, for comparing with the full parser's reading
/// ([`super::cloudwatch_envelope::assert_read_agrees`]).
pub(crate) fn fields(ev: &CloudTrailEvent<'_>) -> String {
    let mut s = format!("{ev:?}");
    // requestParameters and responseElements are left to the full parser.
    if let Some(i) = s.find(", request_parameters") {
        s.truncate(i);
    }
    s
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `json` as the message string of an envelope: its escaped form, and where its content starts.
    fn escaped(json: &str) -> String {
        serde_json::to_string(json).unwrap()
    }

    fn read(json: &str) -> Result<CloudTrailEvent<'static>, Bail> {
        let text: &'static str = Box::leak(format!("{}}}", escaped(json)).into_boxed_str());
        let (ev, end) = read_event(text, 1)?;
        assert_eq!(end, text.len() - 2, "the message ends at its closing quote");
        Ok(ev)
    }

    #[test]
    fn reads_the_fields_the_full_parser_reads() {
        let json = r#"{"eventVersion":"1.08","userIdentity":{"type":"AssumedRole","principalId":"AROA:i-1","arn":"arn:aws:sts::1:assumed-role/r/i-1","accountId":"1","accessKeyId":"ASIAX","sessionContext":{"sessionIssuer":{"type":"Role","principalId":"AROA","arn":"arn:aws:iam::1:role/r","accountId":"1","userName":"r"},"webIdFederationData":{},"attributes":{"creationDate":"2024-08-02T08:20:52Z","mfaAuthenticated":"false"},"ec2RoleDelivery":"2.0"}},"eventTime":"2024-08-02T08:23:55Z","eventSource":"s3.amazonaws.com","eventName":"GetObject","awsRegion":"us-east-1","sourceIPAddress":"1.2.3.4","userAgent":"[aws-cli/2.0]","requestParameters":{"bucketName":"b","key":"a \"quoted\" {key} [x] \\ back","nested":[{"a":[1,2,{"b":null}]},"}"]},"responseElements":null,"requestID":"R","eventID":"e1","readOnly":true,"resources":[{"type":"AWS::S3::Object","ARN":"arn:aws:s3:::b/k"}],"eventType":"AwsApiCall","managementEvent":false,"recipientAccountId":"1","vpcEndpointId":"vpce-1","eventCategory":"Data","tlsDetails":{"tlsVersion":"TLSv1.3"},"sessionCredentialFromConsole":"true"}"#;
        let ev = read(json).unwrap();
        let full = CloudTrailEvent::parse(json).unwrap();
        assert_eq!(fields(&ev), fields(&full));
        assert_eq!(ev.event_id(), "e1");
        assert_eq!(ev.creation_date(), Some("2024-08-02T08:20:52Z"));
        assert!(ev.session_credential_from_console);
        assert!(ev.request_parameters.is_none(), "left to the full parser");
    }

    #[test]
    fn keys_are_told_apart_by_their_whole_text() {
        // Same length and first seven bytes as fields it reads; one as long as 263 bytes, whose
        // length byte would be 7 (eventID's) if it were not capped.
        let long = format!("eventID{}", "x".repeat(256));
        for key in [
            "eventIDs",
            "eventNamf",
            "userAgenx",
            "eventTimf",
            long.as_str(),
        ] {
            let json = format!(
                r#"{{"eventTime":"2024-08-02T08:23:55Z","eventName":"X","eventID":"e","{key}":"y"}}"#
            );
            let ev = read(&json).unwrap();
            assert_eq!(
                fields(&ev),
                fields(&CloudTrailEvent::parse(&json).unwrap()),
                "{key}"
            );
            assert_eq!((ev.event_name(), ev.event_id()), ("X", "e"), "{key}");
        }
    }

    #[test]
    fn gives_up_on_what_only_the_full_parser_can_read() {
        for json in [
            // An escape inside a field it reads.
            r#"{"eventName":"X","userAgent":"a\"b"}"#,
            // An escaped key that spells a field.
            r#"{"event\u004eame":"X"}"#,
            // A duplicate field serde rejects.
            r#"{"eventName":"X","eventName":"Y"}"#,
            r#"{"requestParameters":{},"requestParameters":null}"#,
            // A field of another type.
            r#"{"eventName":5}"#,
            r#"{"userIdentity":null}"#,
            r#"{"userIdentity":{"sessionContext":"x"}}"#,
            // Whitespace between tokens.
            r#"{"eventName": "X"}"#,
            r#" {"eventName":"X"}"#,
            // Not an object.
            r#"["eventName"]"#,
        ] {
            assert_eq!(read(json).map(|e| fields(&e)), Err(Bail), "{json}");
        }
    }

    #[test]
    fn a_message_cut_short_gives_up_and_its_end_is_found() {
        let text = escaped(r#"{"eventName":"X","requestParameters":{"a":[1,2"#);
        let text = format!("{text},\"next\":1}}");
        assert_eq!(read_event(&text, 1).map(|_| ()), Err(Bail));
        let end = string_end(text.as_bytes(), 1).unwrap();
        assert_eq!(&text[end..end + 2], "\",");
        let cut = "\"{\\\"eventName\\\":\\\"X";
        assert_eq!(read_event(cut, 1).map(|_| ()), Err(Bail));
        assert_eq!(string_end(cut.as_bytes(), 1), None);
    }

    #[test]
    fn control_characters_and_other_escapes_give_up() {
        // A raw newline inside the message, and an outer \n (the event pretty-printed).
        for text in [
            "\"{\\\"eventName\\\":\\\"X\n\\\"}\"",
            "\"{\\n\\\"eventName\\\":\\\"X\\\"}\"",
        ] {
            assert_eq!(read_event(text, 1).map(|_| ()), Err(Bail), "{text:?}");
        }
    }

    fn classes_of(bytes: &[u8]) -> Vec<Classes> {
        bytes
            .chunks(64)
            .map(|c| {
                let mut b = [0u8; 64];
                b[..c.len()].copy_from_slice(c);
                classify_scalar(&b)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn simd_classes_are_the_scalar_ones(bytes in proptest::collection::vec(any::<u8>(), 64)) {
            let b: [u8; 64] = bytes.try_into().unwrap();
            prop_assert_eq!(classify_sse2(&b), classify_scalar(&b));
            prop_assert_eq!(classify(&b), classify_scalar(&b));
        }

        /// Outer escapes, across blocks, are those of a byte-at-a-time reading.
        #[test]
        fn escapes_are_those_of_a_plain_reading(bytes in proptest::collection::vec(
            prop_oneof![Just(b'\\'), Just(b'"'), Just(b'x')], 0..300)) {
            let mut want = vec![false; bytes.len()];
            let mut pending = false;
            for (i, &b) in bytes.iter().enumerate() {
                if pending { want[i] = true; pending = false } else if b == b'\\' { pending = true }
            }
            let mut carry = 0;
            let mut got = Vec::new();
            for c in classes_of(&bytes) {
                let e = find_escaped(c.backslash, &mut carry);
                got.extend((0..64).map(|i| e >> i & 1 != 0));
            }
            got.truncate(bytes.len());
            prop_assert_eq!(got, want);
        }

        /// Any object of strings (with quotes, backslashes, brackets and non-ASCII in them),
        /// numbers, nested objects and arrays: the walker reads what the full parser reads,
        /// and finds the message's end.
        #[test]
        fn reads_what_the_full_parser_reads(
            name in "[A-Za-z]{1,12}",
            agent in "[ -~é]{0,20}",
            params in proptest::collection::vec(("[a-z]{1,6}", "[ -~\\\\\"{}\\[\\]é]{0,40}", 0u32..3), 0..12),
            ip in "[0-9.]{1,15}",
        ) {
            let mut p = serde_json::Map::new();
            for (k, v, shape) in params {
                let v = match shape {
                    0 => serde_json::json!(v),
                    1 => serde_json::json!({"x": [v, 1, {"y": null}], "z": true}),
                    _ => serde_json::json!([[v], [], {}]),
                };
                p.insert(k, v);
            }
            let ev = serde_json::json!({
                "eventVersion": "1.08",
                "userIdentity": {"type": "AssumedRole", "accessKeyId": "ASIAX",
                    "sessionContext": {"attributes": {"creationDate": "2024-08-02T08:20:52Z"}}},
                "eventTime": "2024-08-02T08:23:55Z",
                "eventName": name,
                "userAgent": agent,
                "requestParameters": p,
                "sourceIPAddress": ip,
                "eventID": "e",
                "readOnly": false,
            });
            let json = ev.to_string();
            let full = CloudTrailEvent::parse(&json).unwrap();
            let got = read(&json);
            if agent.contains(['"', '\\']) {
                prop_assert_eq!(got.map(|e| fields(&e)), Err(Bail));
            } else {
                prop_assert_eq!(fields(&got.unwrap()), fields(&full));
            }
        }
    }
}
