//! The state file of a batch job: everything `collect`, `status` and `cancel` need to carry on
//! after `submit` has exited (or been killed), as one JSON document rewritten atomically.
//!
//! Each batch moves through `written` (its input file is on disk beside the state) ->
//! `uploaded` (the provider holds the file) -> `creating` (the create request may have been
//! sent) -> `created` (the provider's batch id is known) -> `downloaded` (its results are on
//! disk). The state is saved before each step that spends anything, so after a kill the next
//! command knows exactly which step may have happened: a batch left in `creating` is looked
//! up at the provider before it is created again, so it is never paid for twice.
//!
//! The API key is never part of it: the commands read it from the environment each time.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::base::error::{Error, describe_io};
use crate::engine::input::{ByteSize, InputLimits, ReadOptions};
use crate::engine::pricing::Price;
use crate::engine::schema::OutputSchema;

/// Written into every state file; a file without it is not one of ours.
pub const FORMAT: &str = "batch-state/1";

/// Which Batch API a job uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI Batch API: a JSONL file uploaded to `/v1/files`, then `POST /v1/batches`.
    OpenAi,
    /// The same, for Responses API bodies (`--api responses`): endpoint `/v1/responses`.
    #[serde(rename = "openai-responses")]
    OpenAiResponses,
    /// Anthropic Message Batches: the requests in the body of `POST /v1/messages/batches`.
    Anthropic,
    /// The OpenAI Batch API for `batch embed --via batch`: each line a `/v1/embeddings` body
    /// with the texts of many rows (see [`super::embeddings`]).
    #[serde(rename = "openai-embeddings")]
    OpenAiEmbeddings,
}

impl ProviderKind {
    pub fn label(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "OpenAI Batch API",
            ProviderKind::OpenAiResponses => "OpenAI Batch API for /v1/responses",
            ProviderKind::Anthropic => "Anthropic Message Batches",
            ProviderKind::OpenAiEmbeddings => "OpenAI Batch API for /v1/embeddings",
        }
    }

    /// The provider's documented per-batch limits: requests, and bytes of input.
    pub fn limits(self) -> (u64, u64) {
        match self {
            // "200 MB" and "256 MB": read as decimal megabytes, the smaller reading.
            ProviderKind::OpenAi
            | ProviderKind::OpenAiResponses
            | ProviderKind::OpenAiEmbeddings => (50_000, 200_000_000),
            ProviderKind::Anthropic => (100_000, 256_000_000),
        }
    }

    /// The environment variable the key comes from.
    pub fn key_variable(self) -> &'static str {
        match self {
            ProviderKind::OpenAi
            | ProviderKind::OpenAiResponses
            | ProviderKind::OpenAiEmbeddings => "OPENAI_API_KEY",
            ProviderKind::Anthropic => "ANTHROPIC_API_KEY",
        }
    }
}

/// How far one batch has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Its input file is written locally; nothing is at the provider yet.
    Written,
    /// Its input file is uploaded (OpenAI); the batch is not created.
    Uploaded,
    /// The create request may have been sent: look the batch up before creating it again.
    Creating,
    /// The provider accepted it; `batch_id` is set.
    Created,
    /// It ended and its results are on disk.
    Downloaded,
    /// Cancelled before it was ever created: its rows will not be answered by it.
    Abandoned,
}

/// Requests per outcome, as the provider last reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    #[serde(default)]
    pub expired: u64,
    #[serde(default)]
    pub cancelled: u64,
    #[serde(default)]
    pub processing: u64,
}

/// One batch at the provider, and the rows it carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRecord {
    /// 1-based, in order of creation; later batches (resubmissions) win over earlier ones.
    pub number: usize,
    /// Row positions (0-based `seq`) it carries, as half-open ranges.
    pub rows: Vec<[u64; 2]>,
    pub requests: u64,
    /// Texts its requests carry (embeddings batches only: OpenAI caps them per batch too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<u64>,
    /// Bytes of its input (the JSONL file, or the requests of the create body).
    pub bytes: u64,
    /// Its input file, in the state's files folder.
    pub input_file: String,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_file_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// Unix seconds when the create request was first sent (to find it again after a kill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creating_since: Option<u64>,
    /// The provider's status as last seen (`in_progress`, `completed`, `ended`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default)]
    pub counts: Counts,
    /// Why the provider refused the whole batch (validation errors), if it did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Its downloaded results and errors, in the files folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_file: Option<String>,
    /// The batch a resubmission repeats rows of (none for the first submission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resubmits: Option<Vec<usize>>,
}

impl BatchRecord {
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.rows.iter().flat_map(|[a, b]| *a..*b)
    }

    /// Whether the provider has nothing more to do for it.
    pub fn is_final(&self) -> bool {
        matches!(self.phase, Phase::Downloaded | Phase::Abandoned)
    }

    /// A short name for messages: its provider id, or its number before it has one.
    pub fn name(&self) -> String {
        match &self.batch_id {
            Some(id) => format!("batch {} ({id})", self.number),
            None => format!("batch {}", self.number),
        }
    }
}

/// Prices of the model at submission (standard, per 1M tokens); batch prices are half.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PriceRecord {
    pub input: f64,
    #[serde(default)]
    pub cached_input: Option<f64>,
    #[serde(default)]
    pub cache_write: Option<f64>,
    pub output: f64,
}

impl From<Price> for PriceRecord {
    fn from(p: Price) -> Self {
        PriceRecord {
            input: p.input,
            cached_input: p.cached_input,
            cache_write: p.cache_write,
            output: p.output,
        }
    }
}

impl PriceRecord {
    pub fn standard(&self) -> Price {
        Price {
            input: self.input,
            cached_input: self.cached_input,
            cache_write: self.cache_write,
            output: self.output,
        }
    }
}

/// The whole job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchState {
    pub format: String,
    pub provider: ProviderKind,
    /// Where the API is (no key: that comes from the environment).
    pub base_url: String,
    pub input: PathBuf,
    /// How the input and the results are read and written (CSV in files from before).
    #[serde(default)]
    pub input_format: crate::base::format::Format,
    #[serde(default)]
    pub output_format: crate::base::format::Format,
    /// SHA-256 of the input at submission: the results pair answers with rows by position, so
    /// an input changed since would mislabel them.
    pub input_sha256: String,
    pub output: PathBuf,
    /// Folder of the batch input files and the downloaded results.
    pub files: PathBuf,
    pub id_column: Option<String>,
    pub model: String,
    pub rows: u64,
    pub sanitize: bool,
    /// Standard prices at submission (`None`: unknown model, no costs).
    pub price: Option<PriceRecord>,
    pub prices_as_of: String,
    /// Unix seconds.
    pub submitted_at: u64,
    /// Per-batch limits in force, for resubmissions too.
    pub max_requests: u64,
    pub max_bytes: u64,
    pub batches: Vec<BatchRecord>,
    /// `--schema` as submitted: answers are checked against it and its properties become
    /// `out.<name>` columns, as in `batch run` (absent in files from before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<SchemaRecord>,
    /// `--expect` as submitted: `match` and `match_detail` columns and a pass rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<crate::engine::expect::Expectation>,
    /// The `anthropic-version` and `anthropic-beta` headers given with `--header`, as
    /// `Name: value`, sent on every step of an Anthropic batch. No other header is kept: the
    /// others may carry secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_headers: Vec<String>,
    /// An embeddings job (`batch embed --via batch`): the vectors file is written, not results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed: Option<EmbedJob>,
}

/// What an embeddings job adds to the state: what was embedded and how lines were cut. Which
/// rows each line carries is in `input-NNN.rows.jsonl` beside its input file (see
/// [`super::embeddings`]), not here: a million rows would make every save of this file slow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbedJob {
    pub column: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// Texts per batch at most (OpenAI: 50,000 for `/v1/embeddings` batches).
    pub max_inputs: u64,
    /// Requests (lines) made so far: the next line's `custom_id` is `req-<this>`.
    pub lines: u64,
    /// Tokens of the texts sent, as counted at submission.
    pub tokens: u64,
    /// Rows failed before submission (empty, too long), in `local-failures.jsonl`.
    pub local_failures: u64,
    /// How the input was read at submission, so collect reads the same rows (states written
    /// before it was recorded: the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<ReadRecord>,
}

/// A forced `--delimiter` and the input limits (`--max-field-size` ...) as the state keeps them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<u8>,
    pub max_field_size: u64,
    pub max_row_size: u64,
    pub max_input_size: u64,
}

impl ReadRecord {
    pub fn of(o: ReadOptions) -> Self {
        ReadRecord {
            delimiter: o.delimiter,
            max_field_size: o.limits.field.0,
            max_row_size: o.limits.row.0,
            max_input_size: o.limits.file.0,
        }
    }

    pub fn options(self) -> ReadOptions {
        ReadOptions {
            limits: InputLimits {
                field: ByteSize(self.max_field_size),
                row: ByteSize(self.max_row_size),
                file: ByteSize(self.max_input_size),
            },
            delimiter: self.delimiter,
        }
    }
}

/// A `--schema` as the state file keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchemaRecord {
    pub name: String,
    pub schema: serde_json::Value,
    pub strict: bool,
}

impl SchemaRecord {
    pub fn of(s: &OutputSchema) -> Self {
        SchemaRecord {
            name: s.name.clone(),
            schema: s.schema.clone(),
            strict: s.strict,
        }
    }

    /// The schema compiled again; a state file edited into something else is an input error.
    pub fn compile(&self, path: &Path) -> Result<OutputSchema, Error> {
        OutputSchema::new(self.name.clone(), self.schema.clone(), self.strict).map_err(|e| {
            Error::Input(format!(
                "the schema kept in {} does not compile: {e}",
                path.display()
            ))
        })
    }
}

impl BatchState {
    /// Reads a state file; anything that is not one is a clear input error.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Usage(format!(
                "no batch state file at {}: give the path `batch submit` printed (by default \
                 <results>.batch.json beside the results)",
                path.display()
            )),
            _ => Error::Input(format!(
                "cannot read the batch state file {}: {}",
                path.display(),
                describe_io(&e)
            )),
        })?;
        let state: BatchState = serde_json::from_str(&text).map_err(|e| {
            Error::Input(format!(
                "{} is not a usable batch state file (line {}, column {}: {e}); give the file \
                 `batch submit` wrote, unedited",
                path.display(),
                e.line(),
                e.column()
            ))
        })?;
        if state.format != FORMAT {
            return Err(Error::Input(format!(
                "{} is a state file of another format ({:?}, expected {FORMAT:?})",
                path.display(),
                state.format
            )));
        }
        Ok(state)
    }

    /// Writes the state to a temporary file beside `path`, syncs it and renames it over `path`,
    /// so a kill at any moment leaves either the old state or the new one.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "batch.json".into());
        let tmp = dir.join(format!(".{name}.tmp"));
        let json = serde_json::to_vec_pretty(self).expect("the state serializes");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(
                format!("cannot save the batch state file {}", path.display()),
                e,
            )
        })
    }

    /// Path of a file in the files folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.files.join(name)
    }

    /// For each row, the last batch that carries it (its index in `batches`) and how many
    /// batches carried it.
    pub fn owners(&self) -> (Vec<Option<usize>>, Vec<u32>) {
        let n = self.rows as usize;
        let mut owner = vec![None; n];
        let mut tries = vec![0u32; n];
        for (i, b) in self.batches.iter().enumerate() {
            for seq in b.seqs() {
                if let Some(slot) = owner.get_mut(seq as usize) {
                    *slot = Some(i);
                    tries[seq as usize] += 1;
                }
            }
        }
        (owner, tries)
    }
}

/// The default state path: beside the results, `<results stem>.batch.json`.
pub fn default_path(output: &Path) -> PathBuf {
    output.with_extension("batch.json")
}

/// The files folder of a state file: `<state stem>-files` beside it.
pub fn files_dir(state: &Path) -> PathBuf {
    let stem = state.with_extension("");
    let mut name = stem.as_os_str().to_owned();
    name.push("-files");
    PathBuf::from(name)
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Turns sorted row positions into half-open ranges.
pub fn ranges(seqs: &[u64]) -> Vec<[u64; 2]> {
    let mut out: Vec<[u64; 2]> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some(r) if r[1] == s => r[1] = s + 1,
            _ => out.push([s, s + 1]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_compress_runs() {
        assert_eq!(ranges(&[0, 1, 2, 5, 6, 9]), vec![[0, 3], [5, 7], [9, 10]]);
        assert!(ranges(&[]).is_empty());
    }

    #[test]
    fn paths_sit_beside_the_results() {
        let state = default_path(Path::new("/d/in.results.csv"));
        assert_eq!(state, Path::new("/d/in.results.batch.json"));
        assert_eq!(files_dir(&state), Path::new("/d/in.results.batch-files"));
    }

    #[test]
    fn bad_state_files_are_input_errors_naming_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        std::fs::write(&p, "{\"format\": \"batch-state/1\",\n \"provider\": 3}").unwrap();
        let e = BatchState::load(&p).unwrap_err();
        assert!(matches!(e, Error::Input(_)));
        let msg = e.to_string();
        assert!(msg.contains("s.json") && msg.contains("line 2"), "{msg}");
        let missing = BatchState::load(&dir.path().join("none.json")).unwrap_err();
        assert!(matches!(missing, Error::Usage(_)), "{missing}");
    }
}
