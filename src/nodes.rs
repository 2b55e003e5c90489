//! The RabbitMQ nodes of `TAGCAST_AMQP_URL` (one URL, or the comma-separated node URLs of one
//! cluster) and the order in which a replica tries them: its own shuffled order, so that
//! replicas spread over the nodes, and after losing a node, the next one first.

use std::fmt;
use std::str::FromStr;

use crate::redact::SecretUrl;

/// The node URLs, in the order given; never empty.
#[derive(Clone, PartialEq, Eq)]
pub struct Nodes(Vec<SecretUrl>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodesError {
    #[error("no URL given")]
    Empty,
    #[error("URL {position} is empty (two commas in a row, or one at an end)")]
    Blank { position: usize },
    #[error("URL {position} is not a URL: {reason}")]
    Unparseable { position: usize, reason: String },
    #[error("URL {position} is {scheme}://, not amqp:// or amqps://")]
    Scheme { position: usize, scheme: String },
}

impl FromStr for Nodes {
    type Err = NodesError;
    fn from_str(s: &str) -> Result<Nodes, NodesError> {
        if s.trim().is_empty() {
            return Err(NodesError::Empty);
        }
        let mut urls = Vec::new();
        for (i, part) in s.split(',').enumerate() {
            let position = i + 1;
            let part = part.trim();
            if part.is_empty() {
                return Err(NodesError::Blank { position });
            }
            // The parse error of `url` never quotes its input, so it holds no password.
            let url: SecretUrl =
                part.parse()
                    .map_err(|e: url::ParseError| NodesError::Unparseable {
                        position,
                        reason: e.to_string(),
                    })?;
            let scheme = url.scheme();
            if scheme != "amqp" && scheme != "amqps" {
                return Err(NodesError::Scheme {
                    position,
                    scheme: scheme.to_owned(),
                });
            }
            urls.push(url);
        }
        Ok(Nodes(urls))
    }
}

impl Nodes {
    pub fn urls(&self) -> &[SecretUrl] {
        &self.0
    }

    pub fn get(&self, index: usize) -> &SecretUrl {
        &self.0[index]
    }

    /// This replica's way through the nodes: the nodes in an order drawn from `rng`.
    pub fn failover(&self, rng: &mut fastrand::Rng) -> Failover {
        let mut order: Vec<usize> = (0..self.0.len()).collect();
        rng.shuffle(&mut order);
        Failover { order, current: 0 }
    }
}

/// Shown without passwords, as the list was given.
impl fmt::Display for Nodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, url) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{url}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Nodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nodes({self})")
    }
}

/// Which node to try next. A round starts at the node in use (or last tried) and goes on
/// through the others in this replica's order; losing a node moves the start past it, so
/// the node that just went away is tried last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    order: Vec<usize>,
    current: usize,
}

impl Failover {
    /// Indexes into [`Nodes`], in the order to try them now.
    pub fn round(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.order.len();
        (0..n).map(move |k| self.order[(self.current + k) % n])
    }

    /// The node at `index` took the connection: the next round starts there.
    pub fn connected(&mut self, index: usize) {
        if let Some(position) = self.order.iter().position(|&i| i == index) {
            self.current = position;
        }
    }

    /// The node in use went away: the next round starts with the one after it.
    pub fn lost(&mut self) {
        self.current = (self.current + 1) % self.order.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_parses_or_names_the_url_that_is_wrong() {
        let ok = [
            ("amqp://guest:guest@127.0.0.1:5672/%2f", 1),
            ("amqp://a:5672, amqp://b:5672 ,amqps://c:5671/vhost", 3),
        ];
        for (input, count) in ok {
            let nodes: Nodes = input.parse().unwrap();
            assert_eq!(nodes.urls().len(), count, "{input}");
        }
        let bad = [
            ("", NodesError::Empty),
            ("  ", NodesError::Empty),
            ("amqp://a,,amqp://b", NodesError::Blank { position: 2 }),
            ("amqp://a,", NodesError::Blank { position: 2 }),
            (
                "amqp://a,http://b:15672",
                NodesError::Scheme {
                    position: 2,
                    scheme: "http".into(),
                },
            ),
        ];
        for (input, error) in bad {
            assert_eq!(input.parse::<Nodes>().unwrap_err(), error, "{input:?}");
        }
        assert!(matches!(
            "amqp://a,b c".parse::<Nodes>(),
            Err(NodesError::Unparseable { position: 2, .. })
        ));
    }

    #[test]
    fn passwords_are_never_shown() {
        let nodes: Nodes = "amqp://u:hunter2@a:5672/%2f,amqp://u:hunter3@b:5672/%2f"
            .parse()
            .unwrap();
        let shown = format!("{nodes} {nodes:?}");
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(
            shown.contains("a:5672") && shown.contains("b:5672"),
            "{shown}"
        );
        let error = "amqp://u:hunter2@a,ftp://u:hunter2@b"
            .parse::<Nodes>()
            .unwrap_err();
        assert!(!error.to_string().contains("hunter"));
    }

    #[test]
    fn failover_tries_the_next_node_first_and_the_lost_one_last() {
        let mut f = Failover {
            order: vec![2, 0, 1],
            current: 0,
        };
        let round = |f: &Failover| f.round().collect::<Vec<_>>();
        assert_eq!(round(&f), [2, 0, 1], "a first round follows the order");
        f.connected(2);
        f.lost();
        assert_eq!(round(&f), [0, 1, 2], "node 2 went away: it comes last");
        // 0 was down too; 1 took it.
        f.connected(1);
        assert_eq!(
            round(&f),
            [1, 2, 0],
            "a reconnect tries the node in use first"
        );
        f.lost();
        assert_eq!(round(&f), [2, 0, 1]);
        let mut single = Failover {
            order: vec![0],
            current: 0,
        };
        single.lost();
        assert_eq!(round(&single), [0], "one node: always that one");
    }

    #[test]
    fn every_round_tries_every_node_once_and_replicas_spread() {
        let nodes: Nodes = "amqp://a,amqp://b,amqp://c".parse().unwrap();
        let mut firsts = [0usize; 3];
        for seed in 0..300 {
            let mut f = nodes.failover(&mut fastrand::Rng::with_seed(seed));
            for step in 0..4 {
                let mut round: Vec<usize> = f.round().collect();
                if step == 0 {
                    firsts[round[0]] += 1;
                }
                round.sort_unstable();
                assert_eq!(round, [0, 1, 2], "seed {seed}");
                f.lost();
            }
        }
        assert!(
            firsts.iter().all(|&n| n > 60),
            "each node is the first choice of about a third of the replicas: {firsts:?}"
        );
    }
}
