//! Group commit: callers submit one item each; a single task writes whatever has queued up as
//! one statement, so a busy worker pays one round trip for many records.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::StoreError;

type Reply<O> = oneshot::Sender<Result<O, StoreError>>;

/// Longest a batch statement may take before it counts as failed.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Writes one batch and answers its submitters.
async fn run<I, O, F, Fut>(write: &F, items: Vec<I>, replies: Vec<Reply<O>>)
where
    I: Clone,
    F: Fn(Vec<I>) -> Fut,
    Fut: Future<Output = Result<Vec<O>, StoreError>>,
{
    // A statement whose connection died without a word would wait forever and take its
    // submitters with it: past the timeout it counts as failed, and is written again.
    let written = tokio::time::timeout(WRITE_TIMEOUT, write(items.clone()))
        .await
        .unwrap_or(Err(StoreError::Timeout(WRITE_TIMEOUT)));
    match fallback(written, replies.len()) {
        Fallback::Answer(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Fallback::FailAll(e) => {
            let e = Arc::new(e);
            for reply in replies {
                let _ = reply.send(Err(StoreError::Batch(e.clone())));
            }
        }
        Fallback::OneByOne => {
            for (item, reply) in items.into_iter().zip(replies) {
                let result = write(vec![item]).await.and_then(|mut r| {
                    r.pop().ok_or(StoreError::BatchLength {
                        got: 0,
                        expected: 1,
                    })
                });
                let _ = reply.send(result);
            }
        }
    }
}

/// What to tell the submitters of a batch of `items`, given how its write went.
#[derive(Debug)]
enum Fallback<O> {
    Answer(Vec<O>),
    /// The same error for everyone: the database's state, which one item alone would meet
    /// too, or a batch of one.
    FailAll(StoreError),
    /// Not the database's state but something in the batch: write the items one by one, so
    /// the bad one fails alone.
    OneByOne,
}

fn fallback<O>(written: Result<Vec<O>, StoreError>, items: usize) -> Fallback<O> {
    match written {
        Ok(results) if results.len() == items => Fallback::Answer(results),
        Ok(results) => Fallback::FailAll(StoreError::BatchLength {
            got: results.len(),
            expected: items,
        }),
        Err(e) if e.is_transient() || items == 1 => Fallback::FailAll(e),
        Err(_) => Fallback::OneByOne,
    }
}

/// Submits items to a batch writer. Cheap to clone.
pub struct Batcher<I, O> {
    tx: mpsc::Sender<(I, Reply<O>)>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

impl<I, O> Batcher<I, O>
where
    I: Clone + Send + 'static,
    O: Send + 'static,
{
    /// Starts the writer. `write` turns a batch into one result per item, in order. When a
    /// batch fails for a reason that is not transient, its items are written one by one, so one
    /// bad item fails alone.
    pub fn spawn<F, Fut>(max_batch: usize, write: F) -> Batcher<I, O>
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, StoreError>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<(I, Reply<O>)>(max_batch * 4);
        // One statement at a time: what arrives while it runs makes the next batch, so batches
        // grow with the load and PostgreSQL pays less per record (docs/performance.md).
        tokio::spawn(async move {
            let mut queued = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut queued, max_batch).await > 0 {
                let (items, replies): (Vec<I>, Vec<Reply<O>>) = queued.drain(..).unzip();
                run(&write, items, replies).await;
            }
        });
        Batcher { tx }
    }

    /// Writes one item with whatever else is waiting, and returns its result.
    pub async fn submit(&self, item: I) -> Result<O, StoreError> {
        let (reply, answer) = oneshot::channel();
        // The writer stops only with the process; should it ever, the item is worth retrying.
        self.tx
            .send((item, reply))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(f: &Fallback<u8>) -> &'static str {
        match f {
            Fallback::Answer(_) => "answer",
            Fallback::FailAll(e) if e.is_transient() => "fail all, transient",
            Fallback::FailAll(_) => "fail all",
            Fallback::OneByOne => "one by one",
        }
    }

    #[test]
    fn a_failed_batch_falls_back_by_what_failed() {
        let timeout = || StoreError::Timeout(WRITE_TIMEOUT);
        let bad = || StoreError::Data {
            column: "status",
            value: "x".into(),
        };
        // (what the batch write returned, items in it) -> what the submitters are told
        type Case = (Result<Vec<u8>, StoreError>, usize, &'static str);
        let cases: Vec<Case> = vec![
            (Ok(vec![1, 2]), 2, "answer"),
            (Ok(vec![1]), 2, "fail all"),
            (Err(timeout()), 3, "fail all, transient"),
            (Err(timeout()), 1, "fail all, transient"),
            (Err(bad()), 3, "one by one"),
            (Err(bad()), 1, "fail all"),
        ];
        for (written, items, expected) in cases {
            let shown = format!("{written:?} of {items}");
            assert_eq!(kind(&fallback(written, items)), expected, "{shown}");
        }
    }
}
