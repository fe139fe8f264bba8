//! Constrained decoding: a JSON schema or a regular expression compiled (by `llguidance`) into
//! a token-level automaton over the model's vocabulary, applied as a logits mask inside the
//! scheduler to one sequence (the others in the batch are untouched).
//!
//! `llguidance` builds its lexer and Earley parser from the grammar and computes each step's
//! allowed tokens lazily, walking a trie of the vocabulary's bytes, so a schema costs no index
//! over the whole vocabulary up front and a step's mask costs tens of microseconds. Its fuel
//! limits bound both the compilation and each step's work: a pathological schema or regex ends
//! in an error, not a hung server. A compiled grammar is kept (a bounded cache, least recently
//! used out) and every sequence that uses it starts from a copy of it.
//!
//! End of sequence: allowed only where the grammar accepts; once the grammar can take no more
//! bytes the sequence ends there (finish reason `stop`), as the end token would be forced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{InferenceCapabilities, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::error::{cut, ServerError};

/// Grammars kept compiled (per model).
const CACHE_CAPACITY: usize = 64;
/// The largest schema (as JSON text) and regex taken.
const MAX_SCHEMA_BYTES: usize = 64 * 1024;
const MAX_REGEX_BYTES: usize = 4 * 1024;

/// What a request constrains its output to.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// Text that is JSON valid under the schema (`{"type": "object"}` for any object).
    /// `strict`: a keyword the compiler does not support is an error (otherwise ignored).
    Json { schema: Value, strict: bool },
    /// Text the regular expression matches in whole (Rust `regex` syntax).
    Regex(String),
    /// An `llguidance` Lark grammar (built by the server: tool calls or text).
    Lark(String),
}

impl GrammarSpec {
    /// TGI's `grammar` parameter: `{"type": "json", "value": schema}` (the schema as an object
    /// or as JSON text; `json_object` also), or `{"type": "regex", "value": "..."}`.
    pub fn from_tgi(value: &Value) -> Result<Option<GrammarSpec>, ServerError> {
        let bad = |what: String| ServerError::bad_request(format!("`grammar`: {what}"));
        let object = match value {
            Value::Null => return Ok(None),
            Value::Object(o) => o,
            other => {
                return Err(bad(format!(
                    "must be {{\"type\": \"json\" or \"regex\", \"value\": ...}}, got {}",
                    cut(&other.to_string(), 100)
                )))
            }
        };
        let inner = object.get("value");
        match object.get("type").and_then(Value::as_str) {
            Some("json" | "json_object" | "json_schema") => {
                let schema = match inner {
                    Some(Value::String(text)) => serde_json::from_str(text).map_err(|e| {
                        bad(format!(
                            "the value is not a JSON schema: {}",
                            cut(&e.to_string(), 200)
                        ))
                    })?,
                    Some(schema @ (Value::Object(_) | Value::Bool(_))) => schema.clone(),
                    None | Some(Value::Null) => json!({"type": "object"}),
                    Some(other) => {
                        return Err(bad(format!(
                            "the value must be a JSON schema, got {}",
                            cut(&other.to_string(), 100)
                        )))
                    }
                };
                Ok(Some(GrammarSpec::Json {
                    schema,
                    strict: true,
                }))
            }
            Some("regex") => match inner {
                Some(Value::String(regex)) => Ok(Some(GrammarSpec::Regex(regex.clone()))),
                _ => Err(bad("a regex grammar's value must be a string".into())),
            },
            other => Err(bad(format!(
                "the type must be \"json\" or \"regex\", got {}",
                cut(&other.map_or("nothing".to_string(), str::to_string), 40)
            ))),
        }
    }

    /// The cache's key: the grammar's kind and text.
    fn key(&self) -> String {
        match self {
            GrammarSpec::Json { schema, strict } => format!("json:{strict}:{schema}"),
            GrammarSpec::Regex(regex) => format!("regex:{regex}"),
            GrammarSpec::Lark(grammar) => format!("lark:{grammar}"),
        }
    }

    /// `llguidance`'s grammar: JSON without free whitespace (compact, as small models stay on
    /// track with it) and, unless strict, with unsupported keywords ignored.
    fn top_level(&self) -> Result<TopLevelGrammar, ServerError> {
        match self {
            GrammarSpec::Json { schema, strict } => {
                let size = schema.to_string().len();
                if size > MAX_SCHEMA_BYTES {
                    return Err(ServerError::bad_request(format!(
                        "the JSON schema is {size} bytes; at most {MAX_SCHEMA_BYTES} are taken"
                    )));
                }
                let mut schema = match schema {
                    Value::Bool(true) => json!({}),
                    Value::Bool(false) => {
                        return Err(ServerError::bad_request(
                            "the JSON schema `false` matches nothing",
                        ))
                    }
                    other => other.clone(),
                };
                let options = json!({"whitespace_flexible": false, "lenient": !strict});
                if let Value::Object(o) = &mut schema {
                    // (the request's own options, if any, win)
                    let mut merged = options;
                    if let Some(Value::Object(own)) = o.get("x-guidance") {
                        for (k, v) in own {
                            merged[k] = v.clone();
                        }
                    }
                    o.insert("x-guidance".into(), merged);
                }
                Ok(TopLevelGrammar::from_json_schema(schema))
            }
            GrammarSpec::Regex(regex) => {
                if regex.len() > MAX_REGEX_BYTES {
                    return Err(ServerError::bad_request(format!(
                        "the regex is {} bytes; at most {MAX_REGEX_BYTES} are taken",
                        regex.len()
                    )));
                }
                Ok(TopLevelGrammar::from_regex(regex))
            }
            GrammarSpec::Lark(grammar) => Ok(TopLevelGrammar::from_lark(grammar.clone())),
        }
    }
}

/// The model's vocabulary as `llguidance` sees it: every token's bytes, in a trie, and the
/// tokenizer (for the text a grammar forces).
struct Vocabulary {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        let text = String::from_utf8_lossy(bytes);
        self.tokenizer
            .encode(text.as_ref(), false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }
}

/// A grammar compiled for one model, ready to start sequences.
pub struct CompiledGrammar {
    /// A matcher at the grammar's start: every sequence works on its own copy.
    start: Mutex<Matcher>,
}

impl std::fmt::Debug for CompiledGrammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompiledGrammar")
    }
}

impl CompiledGrammar {
    /// A sequence's own automaton, at the start.
    pub fn start(&self) -> SequenceConstraint {
        let start = self.start.lock().unwrap_or_else(|e| e.into_inner());
        SequenceConstraint {
            matcher: start.clone(),
        }
    }
}

/// One sequence's position in its grammar.
pub struct SequenceConstraint {
    matcher: Matcher,
}

impl SequenceConstraint {
    /// Sets the logits of every token the grammar does not allow next to -inf; the end tokens
    /// are allowed only where the grammar accepts.
    pub fn mask(&mut self, logits: &mut [f32], eos: &[u32]) -> Result<(), String> {
        let allowed = self.matcher.compute_mask().map_err(|e| e.to_string())?;
        let accepting = self.matcher.is_accepting().map_err(|e| e.to_string())?;
        let words = allowed.as_slice();
        for (chunk, &word) in logits.chunks_mut(32).zip(words) {
            match word {
                u32::MAX => {}
                0 => chunk.fill(f32::NEG_INFINITY),
                _ => {
                    for (bit, l) in chunk.iter_mut().enumerate() {
                        if word & (1 << bit) == 0 {
                            *l = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        // (logits past the vocabulary the automaton knows are no tokens of it)
        logits
            .iter_mut()
            .skip(words.len() * 32)
            .for_each(|l| *l = f32::NEG_INFINITY);
        let saved: Vec<(usize, f32)> = eos
            .iter()
            .filter_map(|&t| Some((t as usize, *logits.get(t as usize)?)))
            .collect();
        for &(t, _) in &saved {
            logits[t] = f32::NEG_INFINITY;
        }
        if accepting {
            // The end tokens keep the model's own logits (set above only if masked by the trie).
            for (t, l) in saved {
                logits[t] = if l.is_finite() { l } else { 0.0 };
            }
        }
        if logits.iter().all(|l| *l == f32::NEG_INFINITY) {
            return Err("the grammar allows no token here".into());
        }
        Ok(())
    }

    /// Moves the automaton past `token`; true when the grammar can take nothing more.
    pub fn commit(&mut self, token: u32, eos: &[u32]) -> Result<bool, String> {
        if eos.contains(&token) {
            return Ok(true);
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| e.to_string())?;
        Ok(self.matcher.is_stopped())
    }
}

/// A model's grammar compiler and its cache of compiled grammars.
pub struct Constraints {
    factory: ParserFactory,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, (Arc<CompiledGrammar>, u64)>,
    clock: u64,
}

impl Constraints {
    /// The vocabulary's trie from the tokenizer (byte-level BPE, or byte-fallback
    /// SentencePiece tokenizers); `eos`: the model's end tokens.
    pub fn new(tokenizer: &Tokenizer, eos: &[u32]) -> anyhow::Result<Constraints> {
        let description: Value = serde_json::from_str(
            &tokenizer
                .to_string(false)
                .map_err(|e| anyhow::anyhow!("the tokenizer could not be written out: {e}"))?,
        )?;
        let words =
            std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&description))
                .map_err(|_| anyhow::anyhow!("the tokenizer's vocabulary could not be read"))??;
        let mut info = TokRxInfo::new(words.len() as u32, eos.first().copied().unwrap_or(0));
        info.tok_end_of_turn = eos.get(1).copied();
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(Vocabulary {
            trie,
            tokenizer: tokenizer.clone(),
        });
        let caps = InferenceCapabilities {
            ff_tokens: false,
            backtrack: false,
            conditional_ff_tokens: false,
            fork: false,
        };
        let mut factory = ParserFactory::new(
            &env,
            caps,
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )?;
        factory.quiet();
        *factory.limits_mut() = ParserLimits {
            verbose_errors: false,
            ..ParserLimits::default()
        };
        Ok(Constraints {
            factory,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// The grammar compiled (from the cache when it was compiled before). An invalid or
    /// too costly grammar is a 400 that says why.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Arc<CompiledGrammar>, ServerError> {
        let key = spec.key();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.clock += 1;
            let now = cache.clock;
            if let Some((compiled, used)) = cache.entries.get_mut(&key) {
                *used = now;
                return Ok(compiled.clone());
            }
        }
        let started = Instant::now();
        let grammar = spec.top_level()?;
        let parser = self.factory.create_parser(grammar);
        let matcher = Matcher::new(parser);
        if let Some(error) = matcher.get_error() {
            return Err(ServerError::bad_request(format!(
                "the grammar could not be compiled: {}",
                cut(&error, 1000)
            )));
        }
        tracing::debug!("grammar compiled in {:?}", started.elapsed());
        let compiled = Arc::new(CompiledGrammar {
            start: Mutex::new(matcher),
        });
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.entries.len() >= CACHE_CAPACITY {
            let oldest = cache
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                cache.entries.remove(&oldest);
            }
        }
        let now = cache.clock;
        cache.entries.insert(key, (compiled.clone(), now));
        Ok(compiled)
    }

    /// Grammars held compiled.
    pub fn cached(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2's tokenizer (models/fetch_models.sh), its end token `<|im_end|>` (2).
    fn smollm2() -> (Tokenizer, Constraints) {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/smollm2-135m-instruct/tokenizer.json"
        );
        let tokenizer = Tokenizer::from_file(path).unwrap();
        let constraints = Constraints::new(&tokenizer, &[2]).unwrap();
        (tokenizer, constraints)
    }

    /// Runs a sequence to its end taking the allowed token with the highest `preference`.
    fn run(
        constraints: &Constraints,
        spec: &GrammarSpec,
        preference: impl Fn(usize) -> f32,
    ) -> Vec<u32> {
        let compiled = constraints.compile(spec).unwrap();
        let mut sequence = compiled.start();
        let mut ids = Vec::new();
        for _ in 0..200 {
            let mut logits: Vec<f32> = (0..49152).map(&preference).collect();
            sequence.mask(&mut logits, &[2]).unwrap();
            let best = (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap();
            if best == 2 {
                return ids;
            }
            ids.push(best as u32);
            if sequence.commit(best as u32, &[2]).unwrap() {
                return ids;
            }
        }
        panic!("the grammar never ended")
    }

    #[test]
    fn masks_follow_a_regex_and_a_schema_and_are_cached() {
        let (tokenizer, constraints) = smollm2();
        let phone = GrammarSpec::Regex("[0-9]{3}-[0-9]{2}".into());
        // Whatever the model prefers (here: high ids, or low ones), the text matches.
        let high: fn(usize) -> f32 = |i| i as f32;
        let low: fn(usize) -> f32 = |i| -(i as f32);
        for preference in [high, low] {
            let ids = run(&constraints, &phone, preference);
            let text = tokenizer.decode(&ids, true).unwrap();
            assert_eq!(text.len(), 6, "{text}");
            assert!(
                text.chars().enumerate().all(|(i, c)| if i == 3 {
                    c == '-'
                } else {
                    c.is_ascii_digit()
                }),
                "{text}"
            );
        }
        let schema = GrammarSpec::Json {
            schema: json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}, "b": {"type": "boolean"}}, "required": ["n", "b"], "additionalProperties": false}),
            strict: true,
        };
        let ids = run(&constraints, &schema, |i| ((i * 7919) % 1000) as f32);
        let value: Value = serde_json::from_str(&tokenizer.decode(&ids, true).unwrap()).unwrap();
        assert!(
            value["n"].as_i64().unwrap() <= 9 && value["b"].is_boolean(),
            "{value}"
        );
        assert_eq!(constraints.cached(), 2);
        constraints.compile(&phone).unwrap();
        assert_eq!(constraints.cached(), 2);
        for bad in [
            GrammarSpec::Regex("[0-9".into()),
            GrammarSpec::Json {
                schema: json!({"type": "nonsense"}),
                strict: true,
            },
            GrammarSpec::Json {
                schema: json!(false),
                strict: false,
            },
        ] {
            let error = constraints.compile(&bad).unwrap_err();
            assert_eq!(error.status().as_u16(), 400, "{error}");
        }
        assert!(GrammarSpec::from_tgi(&json!({"type": "xml", "value": "x"})).is_err());
        assert_eq!(
            GrammarSpec::from_tgi(&json!({"type": "regex", "value": "a+"})).unwrap(),
            Some(GrammarSpec::Regex("a+".into()))
        );
    }
}
