//! JSON Lines bodies (batch transform): every record prepared first, then all of them through
//! the batcher or the generator together, one answer per record in order.

use std::sync::Arc;

use serde_json::Value;

use super::{no_pipeline, split_body, Engine, InferenceService};
use crate::batching::Batcher;
use crate::error::ServerError;
use crate::generation::{GenerationRequest, TextGeneration};
use crate::models::Sequence;
use crate::offload::{self, cpu_work};
use crate::tasks::pipeline::Finish;
use crate::tasks::Pipeline;

/// One record of a JSON Lines body: its line (1-based) and the request body it holds.
pub struct Record {
    pub line: usize,
    pub body: Value,
}

impl InferenceService {
    /// Answers JSON Lines records, one result per record, in order. Every record is prepared
    /// first (a bad one fails the request, naming its line); then all their sequences go to the
    /// batcher or the generator together, under one deadline.
    /// `size`: the body's bytes.
    pub async fn reply_records(
        &self,
        records: Vec<Record>,
        size: usize,
    ) -> Result<Vec<Value>, ServerError> {
        let work = async {
            match &self.engine {
                Engine::Encoder { pipeline, batcher } => {
                    encoder_records(pipeline.clone(), batcher, records, size).await
                }
                Engine::Generation(generation) => {
                    self.generation_records(generation, records).await
                }
                Engine::Speech(speech) => {
                    // Every record's transcription runs at once (they share decoder steps).
                    let answers = records.into_iter().map(|record| async move {
                        let (inputs, parameters) =
                            split_body(record.body).map_err(|e| at_line(record.line, e))?;
                        speech
                            .run_json(inputs, parameters, self.timeout)
                            .await
                            .map_err(|e| at_line(record.line, e))
                    });
                    futures_util::future::try_join_all(answers).await
                }
                Engine::Caption(captioner) => {
                    let answers = records.into_iter().map(|record| async move {
                        let line = record.line;
                        let request = cpu_work(offload::ALWAYS, {
                            let captioner = captioner.clone();
                            move || {
                                let (inputs, parameters) = split_body(record.body)?;
                                captioner.prepare(inputs, parameters)
                            }
                        })
                        .await
                        .map_err(|e| at_line(line, e))?;
                        captioner
                            .run(request, self.timeout)
                            .await
                            .map_err(|e| at_line(line, e))
                    });
                    futures_util::future::try_join_all(answers).await
                }
                Engine::Diffusion(diffusion) => {
                    // One image after the other (the model runs one at a time), each answered
                    // as the JSON encoder writes an image: its base64 PNG.
                    let mut answers = Vec::with_capacity(records.len());
                    for record in records {
                        let line = record.line;
                        let (inputs, parameters) =
                            split_body(record.body).map_err(|e| at_line(line, e))?;
                        let picture = diffusion
                            .run(inputs, parameters, self.timeout)
                            .await
                            .map_err(|e| at_line(line, e))?;
                        answers.push(picture.base64_png().map_err(|e| at_line(line, e))?);
                    }
                    Ok(answers)
                }
                Engine::UserModel => Err(no_pipeline()),
            }
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| ServerError::Timeout(self.timeout.as_secs()))?
    }

    async fn generation_records(
        &self,
        generation: &Arc<TextGeneration>,
        records: Vec<Record>,
    ) -> Result<Vec<Value>, ServerError> {
        let requests = cpu_work(offload::ALWAYS, {
            let generation = generation.clone();
            move || prepare_generation_records(&generation, records)
        })
        .await?;
        // Submitted in order as places free up; each awaits its own answer.
        let runs = requests.into_iter().map(|(line, request)| async move {
            let permits = request.jobs().clamp(1, self.record_jobs_max) as u32;
            let _held = self
                .record_jobs
                .acquire_many(permits)
                .await
                .map_err(|_| ServerError::Internal("the record queue is closed".into()))?;
            generation
                .run(request, self.timeout)
                .await
                .map_err(|e| at_line(line, e))
        });
        futures_util::future::join_all(runs)
            .await
            .into_iter()
            .collect()
    }
}

/// Each record's generation request, in order; a bad record fails them all, naming its line.
fn prepare_generation_records(
    generation: &TextGeneration,
    records: Vec<Record>,
) -> Result<Vec<(usize, GenerationRequest)>, ServerError> {
    let mut requests = Vec::with_capacity(records.len());
    for Record { line, mut body } in records {
        refuse_stream(line, &body)?;
        let stream = body.as_object_mut().and_then(|o| o.shift_remove("stream"));
        let (inputs, parameters) = split_body(body).map_err(|e| at_line(line, e))?;
        let request = generation
            .prepare(inputs, parameters, stream)
            .map_err(|e| at_line(line, e))?;
        if request.stream() {
            return Err(at_line(line, stream_refused()));
        }
        requests.push((line, request));
    }
    Ok(requests)
}

/// Each record's line, sequence count and `finish`, and all their sequences in order.
type PreparedRecords = (Vec<(usize, usize, Finish)>, Vec<Sequence>);

fn prepare_encoder_records(
    pipeline: &dyn Pipeline,
    records: Vec<Record>,
) -> Result<PreparedRecords, ServerError> {
    let mut finishes = Vec::with_capacity(records.len());
    let mut sequences = Vec::new();
    for Record { line, body } in records {
        refuse_stream(line, &body)?;
        let (inputs, parameters) = split_body(body).map_err(|e| at_line(line, e))?;
        let prepared = pipeline
            .prepare(inputs, parameters)
            .map_err(|e| at_line(line, e))?;
        finishes.push((line, prepared.sequences.len(), prepared.finish));
        sequences.extend(prepared.sequences);
    }
    Ok((finishes, sequences))
}

/// The records' sequences through the batcher in one go, then each record's `finish`.
async fn encoder_records(
    pipeline: Arc<dyn Pipeline>,
    batcher: &Batcher,
    records: Vec<Record>,
    size: usize,
) -> Result<Vec<Value>, ServerError> {
    let (finishes, sequences) = cpu_work(size, move || {
        prepare_encoder_records(pipeline.as_ref(), records)
    })
    .await?;
    let outputs = match batcher.submit_many(sequences)?.outputs().await {
        Err(_) => {
            return Err(ServerError::Internal(
                "the model worker dropped the request".into(),
            ))
        }
        Ok(outputs) => outputs?,
    };
    cpu_work(size, move || {
        let mut outputs = outputs.into_iter();
        finishes
            .into_iter()
            .map(|(line, count, finish)| {
                finish(outputs.by_ref().take(count).collect()).map_err(|e| at_line(line, e))
            })
            .collect()
    })
    .await
}

/// `"stream": true` (at the top level or in `parameters`) has no place in a JSON Lines record:
/// its answer is one line.
fn refuse_stream(line: usize, body: &Value) -> Result<(), ServerError> {
    let asks = |v: Option<&Value>| v == Some(&Value::Bool(true));
    let parameters = body.get("parameters");
    if asks(body.get("stream")) || asks(parameters.and_then(|p| p.get("stream"))) {
        return Err(at_line(line, stream_refused()));
    }
    Ok(())
}

fn stream_refused() -> ServerError {
    ServerError::bad_request(
        "\"stream\": true cannot be used in a JSON Lines record (each record is answered with one line); send the record as its own request to stream it",
    )
}

/// A record's error, naming its line.
fn at_line(line: usize, error: ServerError) -> ServerError {
    match error {
        ServerError::BadRequest(m) => {
            ServerError::BadRequest(format!("JSON Lines record on line {line}: {m}"))
        }
        ServerError::Internal(m) => {
            ServerError::Internal(format!("JSON Lines record on line {line}: {m}"))
        }
        other => other,
    }
}
