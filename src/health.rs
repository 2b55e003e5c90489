//! Whether tagcast can reach RabbitMQ and PostgreSQL right now: what `/readyz` and the `up`
//! gauges report. A flag logs when it changes, not each time it is set, so an outage is one
//! line when it begins and one when it ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// One dependency's reachability. Counts as down until it has been reached.
#[derive(Clone)]
pub struct Flag {
    name: &'static str,
    state: Arc<AtomicU8>,
}

impl Flag {
    fn new(name: &'static str) -> Flag {
        Flag {
            name,
            state: Arc::new(AtomicU8::new(UNKNOWN)),
        }
    }

    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// Marks the dependency reachable; logs if it was down (reaching it the first time is the
    /// caller's to announce).
    pub fn up(&self) {
        if self.state.swap(UP, Ordering::AcqRel) == DOWN {
            tracing::info!(dependency = self.name, "reachable again");
        }
    }

    /// Marks the dependency unreachable; logs `why` if it was not down already.
    pub fn down(&self, why: &dyn std::fmt::Display) {
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            tracing::warn!(dependency = self.name, error = %why, "unreachable; work waits until it is back");
        }
    }
}

/// Both dependencies. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    pub broker: Flag,
    pub database: Flag,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            broker: Flag::new("rabbitmq"),
            database: Flag::new("postgresql"),
        }
    }
}

impl Health {
    pub fn ready(&self) -> bool {
        self.broker.is_up() && self.database.is_up()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_both_are_up() {
        let health = Health::default();
        assert!(!health.ready());
        health.broker.up();
        assert!(!health.ready());
        health.database.up();
        assert!(health.ready());
        health.database.down(&"gone");
        health.database.down(&"still gone");
        assert!(!health.ready() && health.broker.is_up());
    }
}
