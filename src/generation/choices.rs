//! Generation as the OpenAI and TGI routes need it, on the same scheduler as the pipeline: one
//! prompt, `n` sequences generated together, every token reported with its text and
//! log-probabilities, stop strings cut (kept in the text, as TGI does, or removed with what
//! follows, as OpenAI does), and the text released piece by piece for streaming, holding back
//! what may still turn out to be the start of a stop string.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

use super::constrained::GrammarSpec;
use super::job::{Event, FinishReason};
use super::params::{Length, ValidParameters};
use super::pipeline::{find_stop, Flavor, Prompt, TextGeneration};
use super::sampling::TokenLogprobs;
use crate::error::ServerError;

/// What the routes ask beyond the pipeline's parameters.
#[derive(Debug, Clone, Default)]
pub struct ChoiceOptions {
    /// Sequences generated for the prompt (each its own job; a seed is offset by the index).
    pub n: usize,
    pub stop: Vec<String>,
    /// Whether a stop string stays at the end of the text (TGI) or is cut with it (OpenAI).
    pub keep_stop: bool,
    /// The model's log-probabilities with each token: the chosen one's and this many others'.
    pub logprobs: Option<usize>,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// Added to these tokens' logits at every step (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
    /// Without `max_new_tokens`, generate up to the model's positions (OpenAI's default), not
    /// the pipeline's default length.
    pub until_context_end: bool,
    /// The grammar the text must follow (OpenAI's `response_format`).
    pub grammar: Option<GrammarSpec>,
    /// Score the prompt's tokens (TGI's `decoder_input_details`; the first sequence's job).
    pub prompt_logprobs: bool,
    /// Tools for the chat template's tools section (OpenAI's `tools`, as declared).
    pub tools: Option<Value>,
}

/// A prompt and its parameters, checked, ready to start.
pub struct ChoicesRequest {
    prompt: Prompt,
    params: ValidParameters,
    options: ChoiceOptions,
}

impl ChoicesRequest {
    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt.ids
    }

    pub fn seed(&self) -> Option<u64> {
        self.params.sampling.seed
    }

    pub fn n(&self) -> usize {
        self.options.n
    }
}

/// How a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// `max_new_tokens` (or the model's positions, or `max_time`) reached.
    Length,
    EosToken,
    StopSequence,
}

/// One generated token.
#[derive(Debug, Clone)]
pub struct GeneratedToken {
    pub id: u32,
    /// Under the processed distribution the token was chosen from (TGI's `logprob`).
    pub logprob: f32,
    /// The model's own, when asked for.
    pub model_logprobs: Option<Box<TokenLogprobs>>,
}

/// What one event added to one sequence.
#[derive(Debug)]
pub struct Progress {
    pub index: usize,
    pub token: GeneratedToken,
    /// Text that can be sent now (empty while held back).
    pub piece: String,
    pub finish: Option<Finish>,
}

#[derive(Default)]
struct ChoiceState {
    ids: Vec<u32>,
    tokens: Vec<GeneratedToken>,
    text: String,
    sent_chars: usize,
    finish: Option<Finish>,
}

/// The running sequences of one request. Dropping it ends the ones still running.
pub struct Choices {
    generation: Arc<TextGeneration>,
    prompt: Prompt,
    stop: Vec<String>,
    keep_stop: bool,
    receivers: Vec<Option<mpsc::UnboundedReceiver<Event>>>,
    states: Vec<ChoiceState>,
    /// The prompt tokens' log-probabilities (all but the first), when asked for.
    prompt_logprobs: Option<Vec<f32>>,
    started: Instant,
    deadline: Duration,
}

impl TextGeneration {
    /// Checks one prompt (a string, or a chat rendered with the template) and the pipeline's
    /// `parameters` for it, with the routes' options. Text-generation models only.
    pub fn prepare_choices(
        &self,
        input: Value,
        parameters: Value,
        mut options: ChoiceOptions,
    ) -> Result<ChoicesRequest, ServerError> {
        if !matches!(self.flavor, Flavor::Causal) {
            return Err(ServerError::bad_request(format!(
                "this route serves text-generation models; this one is a {} model: send {{\"inputs\": ...}}",
                self.task
            )));
        }
        if !(1..=self.generator.capacity()).contains(&options.n) {
            return Err(ServerError::bad_request(format!(
                "n must be from 1 to {} (MAX_QUEUE), got {}",
                self.generator.capacity(),
                options.n
            )));
        }
        let input = match (options.tools.take(), &self.chat) {
            // (rendered here, with the tools; its special tokens are in the text)
            (Some(tools), Some(chat)) => {
                Value::String(chat.render_with_tools(&input, Some(&tools))?)
            }
            _ => input,
        };
        let request = self.prepare(input, Some(parameters), None)?;
        let mut params = request.params;
        if let Some(grammar) = options.grammar.take() {
            params.grammar = Some(grammar);
            params = self.constrain(params)?;
        }
        if options.until_context_end && !params.max_new_tokens_given {
            params.length = Length::DefaultNew(usize::MAX);
        }
        let prompt = request
            .prompts
            .into_iter()
            .next()
            .ok_or_else(|| ServerError::bad_request("the prompt is missing"))?;
        Ok(ChoicesRequest {
            prompt,
            params,
            options,
        })
    }

    /// Starts the request's sequences (all queued at once, so they share steps).
    pub fn start_choices(
        self: &Arc<Self>,
        request: ChoicesRequest,
        deadline: Duration,
    ) -> Result<Choices, ServerError> {
        let ChoicesRequest {
            prompt,
            params,
            options,
        } = request;
        let mut receivers = Vec::with_capacity(options.n);
        for index in 0..options.n {
            let mut sampling = self.sampling(&params, &prompt, index)?;
            sampling.logprobs = options.logprobs;
            sampling.prompt_logprobs = options.prompt_logprobs && index == 0;
            let processors = &mut sampling.processors;
            processors.frequency_penalty = options.frequency_penalty;
            processors.presence_penalty = options.presence_penalty;
            processors.sequence_bias.extend(
                options
                    .logit_bias
                    .iter()
                    .map(|&(id, bias)| (vec![id], bias)),
            );
            receivers.push(Some(self.generator.submit(prompt.ids.clone(), sampling)?));
        }
        Ok(Choices {
            generation: self.clone(),
            states: (0..options.n).map(|_| ChoiceState::default()).collect(),
            prompt,
            stop: options.stop,
            keep_stop: options.keep_stop,
            receivers,
            prompt_logprobs: None,
            started: Instant::now(),
            deadline,
        })
    }

    /// Whether the model's chat template has a tools section (it reads `tools`).
    pub fn chat_reads_tools(&self) -> bool {
        self.chat.as_ref().is_some_and(|c| c.reads_tools())
    }

    /// Whether this is a decoder-only text-generation model (the OpenAI and TGI routes' kind).
    pub fn is_text_generation(&self) -> bool {
        matches!(self.flavor, Flavor::Causal)
    }

    /// A token's own text (special tokens written out) and whether it is a special token.
    pub fn token_text(&self, id: u32) -> (String, bool) {
        let tokenizer = self.tokens.tokenizer();
        let special = tokenizer
            .id_to_token(id)
            .is_some_and(|t| tokenizer.get_added_vocabulary().is_special_token(&t));
        (tokenizer.decode(&[id], false).unwrap_or_default(), special)
    }
}

impl Choices {
    pub fn generation(&self) -> &Arc<TextGeneration> {
        &self.generation
    }

    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt.ids
    }

    /// The prompt's text (a chat's rendered template).
    pub fn prompt_text(&self) -> &str {
        &self.prompt.text
    }

    /// Sequences generated.
    pub fn n(&self) -> usize {
        self.states.len()
    }

    /// The next token of any running sequence; `None` once every one has finished.
    pub async fn next(&mut self) -> Result<Option<Progress>, ServerError> {
        loop {
            if let Some(progress) = self.next_event().await? {
                return Ok(progress);
            }
        }
    }

    /// The next event of any sequence: `Some(progress)`, or `None` for the prompt's scores.
    async fn next_event(&mut self) -> Result<Option<Option<Progress>>, ServerError> {
        if self.receivers.iter().all(Option::is_none) {
            return Ok(Some(None));
        }
        let remaining = self.deadline.saturating_sub(self.started.elapsed());
        let receivers = &mut self.receivers;
        let (index, event) = tokio::time::timeout(
            remaining,
            poll_fn(|cx| {
                for (index, receiver) in receivers.iter_mut().enumerate() {
                    if let Some(receiver) = receiver {
                        if let Poll::Ready(event) = receiver.poll_recv(cx) {
                            return Poll::Ready((index, event));
                        }
                    }
                }
                Poll::Pending
            }),
        )
        .await
        .map_err(|_| ServerError::Timeout(self.deadline.as_secs()))?;
        match event {
            Some(Event::Token {
                id,
                logprob,
                finish,
                model_logprobs,
            }) => {
                let token = GeneratedToken {
                    id,
                    logprob,
                    model_logprobs,
                };
                self.advance(index, token, finish).map(|p| Some(Some(p)))
            }
            Some(Event::Prompt(logprobs)) => {
                self.prompt_logprobs = Some(logprobs);
                Ok(None)
            }
            Some(Event::Failed(error)) => Err(error.into()),
            Some(Event::Sequences(_)) => Err(ServerError::Internal(
                "a beam search answered a request for single sequences".into(),
            )),
            None => Err(ServerError::Internal(
                "the generation scheduler dropped the sequence".into(),
            )),
        }
    }

    /// Runs every sequence to its end.
    pub async fn finish_all(&mut self) -> Result<(), ServerError> {
        while self.next().await?.is_some() {}
        Ok(())
    }

    fn advance(
        &mut self,
        index: usize,
        token: GeneratedToken,
        finish: Option<FinishReason>,
    ) -> Result<Progress, ServerError> {
        let state = &mut self.states[index];
        state.ids.push(token.id);
        state.tokens.push(token.clone());
        let mut text = self.generation.new_text(&self.prompt, &state.ids)?;
        let stop_at = if self.keep_stop {
            find_stop(&text, &self.stop)
        } else {
            find_stop_start(&text, &self.stop)
        };
        let finish = match (stop_at, finish) {
            (Some(cut), _) => {
                text.truncate(cut);
                Some(Finish::StopSequence)
            }
            (None, Some(FinishReason::EosToken)) => Some(Finish::EosToken),
            (None, Some(FinishReason::Length)) => Some(Finish::Length),
            (None, None) => None,
        };
        let hold = match finish {
            Some(_) => 0,
            None if text.ends_with('\u{FFFD}') => usize::MAX,
            None if self.keep_stop => 0,
            None => stop_prefix_chars(&text, &self.stop),
        };
        let ready = text.chars().count().saturating_sub(hold);
        let piece: String = text
            .chars()
            .skip(state.sent_chars)
            .take(ready.saturating_sub(state.sent_chars))
            .collect();
        state.sent_chars += piece.chars().count();
        state.text = text;
        state.finish = finish;
        if finish.is_some() {
            // Dropping the receiver takes the sequence out of the batch (a stop string).
            self.receivers[index] = None;
        }
        Ok(Progress {
            index,
            token,
            piece,
            finish,
        })
    }

    /// The prompt tokens' log-probabilities (all but the first), once they came.
    pub fn prompt_logprobs(&self) -> Option<&[f32]> {
        self.prompt_logprobs.as_deref()
    }

    /// Sequence `index`'s text so far (cut at a stop string).
    pub fn text(&self, index: usize) -> &str {
        &self.states[index].text
    }

    pub fn tokens(&self, index: usize) -> &[GeneratedToken] {
        &self.states[index].tokens
    }

    pub fn finish(&self, index: usize) -> Option<Finish> {
        self.states[index].finish
    }

    /// Tokens generated by all the sequences.
    pub fn generated_tokens(&self) -> usize {
        self.states.iter().map(|s| s.tokens.len()).sum()
    }
}

/// The byte offset where the first stop string in `text` starts.
fn find_stop_start(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// Characters at the end of `text` that begin some stop string (and may yet complete it).
fn stop_prefix_chars(text: &str, stop: &[String]) -> usize {
    stop.iter()
        .filter_map(|s| {
            (1..s.len())
                .rev()
                .filter(|&k| s.is_char_boundary(k))
                .find(|&k| text.ends_with(&s[..k]))
                .map(|k| s[..k].chars().count())
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_and_their_beginnings_held_back() {
        let stop = vec!["END".to_string(), "\n\n".to_string()];
        assert_eq!(find_stop_start("abc END def", &stop), Some(4));
        assert_eq!(find_stop_start("a\n\nEND", &stop), Some(1));
        assert_eq!(find_stop_start("abc", &stop), None);
        assert_eq!(stop_prefix_chars("abc EN", &stop), 2);
        assert_eq!(stop_prefix_chars("abc\n", &stop), 1);
        assert_eq!(stop_prefix_chars("abc", &stop), 0);
        assert_eq!(stop_prefix_chars("héé", &["éé!".to_string()]), 2);
    }
}
