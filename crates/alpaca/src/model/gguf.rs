//! GGUF: the file format of llama.cpp, read and written.
//!
//! Layout (spec: ggml `docs/gguf.md`), all little-endian:
//!
//! ```text
//! magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
//! n_kv x (key: string, type: u32, value)
//! n_tensors x (name: string, n_dims: u32, dims: n_dims x u64, type: u32, offset: u64)
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor's offset is relative to here and aligned
//! ```
//!
//! The reader memory-maps the file and never trusts a count, a length or an offset: every
//! one is checked against the bytes that remain, so a truncated or corrupt file is an error,
//! never a panic or a huge allocation. Version 1 (32-bit counts) is refused; 2 and 3 are read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::linear::Storage;
use crate::model::quant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;

// ------------------------------------------------------------------------------------------
// Metadata values
// ------------------------------------------------------------------------------------------

/// One metadata value. Arrays hold values of a single type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Element type code and the elements.
    Array(u32, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    fn type_code(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(..) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    pub fn type_name(&self) -> &'static str {
        type_name(self.type_code())
    }

    /// Any integer type as u64 (negative values give None).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type as i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any numeric type as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, v) => Some(v),
            _ => None,
        }
    }
}

fn type_name(code: u32) -> &'static str {
    match code {
        0 => "u8",
        1 => "i8",
        2 => "u16",
        3 => "i16",
        4 => "u32",
        5 => "i32",
        6 => "f32",
        7 => "bool",
        8 => "string",
        9 => "array",
        10 => "u64",
        11 => "i64",
        12 => "f64",
        _ => "unknown",
    }
}

// ------------------------------------------------------------------------------------------
// Tensor infos
// ------------------------------------------------------------------------------------------

/// Where one tensor lives in the file. `dims` are in ggml order: `dims[0]` is the
/// contiguous (row) length, so a matrix with `rows x cols` in row-major order has
/// `dims = [cols, rows]`.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute offset of the first byte in the file.
    pub offset: usize,
    pub n_bytes: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

// ------------------------------------------------------------------------------------------
// Reader
// ------------------------------------------------------------------------------------------

/// An opened GGUF file: parsed metadata and tensor infos over a memory map.
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    mmap: Arc<memmap2::Mmap>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Memory-map and parse `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::ModelNotFound {
                    path: path.clone(),
                    hint: "Check the path.".into(),
                }
            } else {
                Error::io(&path, e)
            }
        })?;
        // SAFETY: the map is read-only; a file truncated by another process under us is the
        // one hazard of every memory-mapped reader (llama.cpp and safetensors share it).
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let len = mmap.len();
        Self::from_map(path, mmap, len)
    }

    /// Parse the first `len` bytes of a map into a `Gguf` that keeps the map alive.
    fn from_map(path: PathBuf, mmap: memmap2::Mmap, len: usize) -> Result<Gguf> {
        let header = parse(&mmap[..len]).map_err(|reason| Error::Gguf {
            path: path.clone(),
            reason,
        })?;
        Ok(Gguf {
            path,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            alignment: header.alignment,
            mmap: Arc::new(mmap),
        })
    }

    /// A GGUF built in memory (a converted Hugging Face directory, a merged model): the
    /// bytes go into an anonymous read-only map, so every reader path is the file path.
    /// `path` only names the model in messages.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: &[u8]) -> Result<Gguf> {
        let path = path.as_ref().to_path_buf();
        let mut anon =
            memmap2::MmapMut::map_anon(bytes.len().max(1)).map_err(|e| Error::io(&path, e))?;
        anon[..bytes.len()].copy_from_slice(bytes);
        let mmap = anon.make_read_only().map_err(|e| Error::io(&path, e))?;
        Self::from_map(path, mmap, bytes.len())
    }

    /// Parse a GGUF held in memory (tests, fuzzing). Returns the reason on failure.
    pub fn parse_bytes(bytes: &[u8]) -> std::result::Result<(), String> {
        parse(bytes).map(|_| ())
    }

    /// The raw bytes of a tensor.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        // Bounds were checked at parse time.
        &self.mmap[info.offset..info.offset + info.n_bytes]
    }

    /// A shared handle on a tensor's bytes that outlives this `Gguf` (weights keep the map).
    pub fn storage(&self, info: &TensorInfo) -> Storage {
        Storage::Mapped {
            map: Arc::clone(&self.mmap),
            offset: info.offset,
            len: info.n_bytes,
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn req(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).ok_or_else(|| Error::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    fn type_err(&self, key: &str, expected: &'static str, v: &Value) -> Error {
        Error::KeyType {
            path: self.path.clone(),
            key: key.into(),
            expected,
            found: v.type_name().into(),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.req(key)?;
        v.as_str().ok_or_else(|| self.type_err(key, "string", v))
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.req(key)?;
        v.as_u64()
            .ok_or_else(|| self.type_err(key, "unsigned integer", v))
    }

    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.get_u64(key)?;
        usize::try_from(v).map_err(|_| Error::Gguf {
            path: self.path.clone(),
            reason: format!("`{key}` = {v} does not fit in memory"),
        })
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.req(key)?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| self.type_err(key, "number", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let v = self.req(key)?;
        v.as_bool().ok_or_else(|| self.type_err(key, "bool", v))
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        let v = self.req(key)?;
        v.as_array().ok_or_else(|| self.type_err(key, "array", v))
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let arr = self.get_array(key)?;
        arr.iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.type_err(key, "array of string", v))
            })
            .collect()
    }

    /// An array of numbers as f32.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        let arr = self.get_array(key)?;
        arr.iter()
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| self.type_err(key, "array of number", v))
            })
            .collect()
    }

    /// An array of integers as i64.
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        let arr = self.get_array(key)?;
        arr.iter()
            .map(|v| {
                v.as_i64()
                    .ok_or_else(|| self.type_err(key, "array of integer", v))
            })
            .collect()
    }
}

#[derive(Debug)]
struct Header {
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
}

/// A bounds-checked little-endian cursor.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

type PResult<T> = std::result::Result<T, String>;

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> PResult<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(format!(
                "truncated: needed {n} bytes for {what} at offset {}, file has {}",
                self.pos,
                self.buf.len()
            )),
        }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn array<const N: usize>(&mut self, what: &str) -> PResult<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> PResult<u32> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }
    fn u64(&mut self, what: &str) -> PResult<u64> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }
    /// A count of items that each take at least `min_item` bytes: refuse counts that cannot
    /// fit in what remains, so a corrupt count never drives a huge allocation.
    fn count(&mut self, what: &str, min_item: usize) -> PResult<usize> {
        let n = self.u64(what)?;
        let max = (self.remaining() / min_item.max(1)) as u64;
        if n > max {
            return Err(format!(
                "{what} = {n} is impossible: only {} bytes remain",
                self.remaining()
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> PResult<String> {
        let n = self.count(what, 1)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
    }
}

fn parse_value(c: &mut Cursor, ty: u32, key: &str, depth: u32) -> PResult<Value> {
    Ok(match ty {
        0 => Value::U8(c.array::<1>(key)?[0]),
        1 => Value::I8(c.array::<1>(key)?[0] as i8),
        2 => Value::U16(u16::from_le_bytes(c.array(key)?)),
        3 => Value::I16(i16::from_le_bytes(c.array(key)?)),
        4 => Value::U32(c.u32(key)?),
        5 => Value::I32(i32::from_le_bytes(c.array(key)?)),
        6 => Value::F32(f32::from_le_bytes(c.array(key)?)),
        7 => match c.array::<1>(key)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => return Err(format!("key `{key}`: invalid bool byte {b}")),
        },
        8 => Value::String(c.string(key)?),
        9 => {
            if depth > 2 {
                return Err(format!("key `{key}`: arrays nested too deeply"));
            }
            let elem = c.u32(key)?;
            let min = match elem {
                0 | 1 | 7 => 1,
                2 | 3 => 2,
                4..=6 => 4,
                8 | 10..=12 => 8,
                9 => 12,
                t => return Err(format!("key `{key}`: unknown array element type {t}")),
            };
            let n = c.count(key, min)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(parse_value(c, elem, key, depth + 1)?);
            }
            Value::Array(elem, items)
        }
        10 => Value::U64(c.u64(key)?),
        11 => Value::I64(i64::from_le_bytes(c.array(key)?)),
        12 => Value::F64(f64::from_le_bytes(c.array(key)?)),
        t => return Err(format!("key `{key}`: unknown value type {t}")),
    })
}

fn parse(buf: &[u8]) -> PResult<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.take(4, "magic")?;
    if magic != MAGIC {
        return Err("bad magic (expected the bytes \"GGUF\")".into());
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => return Err("GGUF version 1 is obsolete; convert it with a current llama.cpp".into()),
        v => return Err(format!("unknown GGUF version {v} (supported: 2, 3)")),
    }
    // A tensor info takes at least 8 (name len) + 4 + 4 + 8 bytes.
    let n_tensors = c.count("tensor count", 24)?;
    // A key-value pair takes at least 8 (key len) + 4 (type) + 1 bytes.
    let n_kv = c.count("metadata count", 13)?;

    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let ty = c.u32(&key)?;
        let value = parse_value(&mut c, ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("duplicate metadata key `{key}`"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => return Err(format!("general.alignment = {v:?} is not a power of two")),
        },
    };

    let mut raw = Vec::with_capacity(n_tensors);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n_tensors {
        let name = c.string("tensor name")?;
        let n_dims = c.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}`: {n_dims} dimensions (1 to 4 allowed)"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&name)?);
        }
        let ty_code = c.u32(&name)?;
        let ty = GgmlType::from_code(ty_code)
            .ok_or_else(|| format!("tensor `{name}`: unknown ggml type {ty_code}"))?;
        let offset = c.u64(&name)?;
        if !seen.insert(name.clone()) {
            return Err(format!("duplicate tensor name `{name}`"));
        }
        raw.push((name, dims, ty, offset));
    }
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, dims, ty, offset) in raw {
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor `{name}`: dimensions {dims:?} overflow"))?;
        let block = ty.block_size() as u64;
        if dims[0] % block != 0 {
            return Err(format!(
                "tensor `{name}`: row length {} is not a multiple of the {} block size {block}",
                dims[0],
                ty.name()
            ));
        }
        let n_bytes = (n_elements / block)
            .checked_mul(ty.type_size() as u64)
            .ok_or_else(|| format!("tensor `{name}`: size overflows"))?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor `{name}`: offset {offset} is not aligned to {alignment}"
            ));
        }
        let start = data_start
            .checked_add(offset)
            .filter(|s| s.checked_add(n_bytes).is_some_and(|e| e <= file_len))
            .ok_or_else(|| {
                format!(
                    "tensor `{name}`: data at {offset}+{n_bytes} lies outside the file \
                     (truncated download?)"
                )
            })?;
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset: start as usize,
            n_bytes: n_bytes as usize,
        });
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
    })
}

// ------------------------------------------------------------------------------------------
// Writer
// ------------------------------------------------------------------------------------------

/// Builds a GGUF v3 file: metadata, then tensors with their raw (already encoded) bytes.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set a metadata key (replacing an earlier value for the same key).
    pub fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        self.metadata.retain(|(k, _)| *k != key);
        self.metadata.push((key, value));
    }

    /// Add a tensor, replacing an earlier one of the same name (names are unique in GGUF).
    /// `dims` in ggml order (`dims[0]` = row length); `data` already encoded.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: Vec<u64>,
        ty: GgmlType,
        data: Vec<u8>,
    ) {
        let name = name.into();
        if let Some(t) = self.tensors.iter_mut().find(|t| t.0 == name) {
            *t = (name, dims, ty, data);
            return;
        }
        self.tensors.push((name, dims, ty, data));
    }

    /// Serialize to bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self
            .metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT) as usize;
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&v.type_code().to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0usize;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.code().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len()).div_ceil(align) * align;
        }
        let data_start = out.len().div_ceil(align) * align;
        out.resize(data_start, 0);
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(data);
        }
        out
    }

    /// Write atomically: a temporary file beside `path`, fsync, then rename.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes())
    }
}

/// Write `bytes` to `path` through a temporary file and a rename, so an existing file is
/// never left half-written.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    // Unique per process and call, so concurrent writers never share a temporary file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "{}.tmp{}-{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(elem, items) => {
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_value(out, it);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// Convenience constructors for metadata arrays.
pub fn str_array<S: AsRef<str>>(items: &[S]) -> Value {
    Value::Array(
        8,
        items
            .iter()
            .map(|s| Value::String(s.as_ref().to_string()))
            .collect(),
    )
}
pub fn f32_array(items: &[f32]) -> Value {
    Value::Array(6, items.iter().map(|&x| Value::F32(x)).collect())
}
pub fn i32_array(items: &[i32]) -> Value {
    Value::Array(5, items.iter().map(|&x| Value::I32(x)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::String("llama".into()));
        w.set("a.u8", Value::U8(7));
        w.set("a.i8", Value::I8(-7));
        w.set("a.u16", Value::U16(700));
        w.set("a.i16", Value::I16(-700));
        w.set("a.u32", Value::U32(70000));
        w.set("a.i32", Value::I32(-70000));
        w.set("a.f32", Value::F32(1.5));
        w.set("a.bool", Value::Bool(true));
        w.set("a.u64", Value::U64(1 << 40));
        w.set("a.i64", Value::I64(-(1 << 40)));
        w.set("a.f64", Value::F64(2.25));
        w.set("a.strs", str_array(&["x", "yz", ""]));
        w.set(
            "a.nested",
            Value::Array(9, vec![i32_array(&[1, 2]), i32_array(&[])]),
        );
        let f: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        w.add_tensor("t.a", vec![4], GgmlType::F32, f.clone());
        w.add_tensor("t.b", vec![2, 2], GgmlType::F32, f);
        w.to_bytes()
    }

    #[test]
    fn round_trip_every_value_type() {
        let bytes = sample();
        let h = parse(&bytes).expect("valid");
        assert_eq!(h.version, 3);
        assert_eq!(h.metadata["a.u8"], Value::U8(7));
        assert_eq!(h.metadata["a.i64"], Value::I64(-(1 << 40)));
        assert_eq!(h.metadata["a.f64"], Value::F64(2.25));
        assert_eq!(h.metadata["a.strs"].as_array().map(|a| a.len()), Some(3));
        assert_eq!(h.metadata["a.nested"].as_array().map(|a| a.len()), Some(2));
        assert_eq!(h.tensors.len(), 2);
        let t = &h.tensors[1];
        assert_eq!(t.offset % 32, 0);
        let vals: Vec<f32> = bytes[t.offset..t.offset + t.n_bytes]
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(vals, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn in_memory_gguf_reads_like_a_file() {
        let g = Gguf::from_bytes("<memory>", &sample()).expect("valid");
        assert_eq!(g.get_str("general.architecture").ok(), Some("llama"));
        let t = g.tensor("t.b").expect("tensor");
        assert_eq!(g.tensor_data(t).len(), 16);
        assert_eq!(&g.tensor_data(t)[4..8], &2.0f32.to_le_bytes());
        assert!(Gguf::from_bytes("<memory>", b"GGUF").is_err());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for n in 0..bytes.len() - 1 {
            // Truncating into the trailing tensor data must also fail.
            assert!(parse(&bytes[..n]).is_err(), "truncated to {n} bytes parsed");
        }
    }

    #[test]
    fn rejects_bad_versions_and_counts() {
        let mut b = sample();
        b[4] = 1;
        assert!(parse(&b).unwrap_err().contains("version 1"));
        b[4] = 9;
        assert!(parse(&b).unwrap_err().contains("unknown GGUF version"));
        let mut b = sample();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&b).unwrap_err().contains("impossible"));
    }

    /// Property test: thousands of randomly mutated files never panic.
    #[test]
    fn mutated_files_never_panic() {
        let base = sample();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut errors = 0;
        for _ in 0..20_000 {
            let mut b = base.clone();
            let n_mut = 1 + next() % 4;
            for _ in 0..n_mut {
                if b.is_empty() {
                    break;
                }
                let i = (next() % b.len() as u64) as usize;
                match next() % 4 {
                    0 => b[i] = next() as u8,
                    1 => b[i] ^= 1 << (next() % 8),
                    2 => b[i] = [0x00, 0xff, 0x7f, 0x80][(next() % 4) as usize],
                    _ => b.truncate(i),
                }
            }
            if parse(&b).is_err() {
                errors += 1;
            }
        }
        assert!(
            errors > 1000,
            "mutations should often be detected ({errors})"
        );
    }
}
