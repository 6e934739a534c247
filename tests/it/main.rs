//! Every integration test, in one binary: one link of the library instead of one per feature,
//! and one pool of test threads across all of them. Each module is one feature, over the shared
//! harness in `common/`; see each module's own documentation.

mod common;
mod invariant;

mod api;
mod cli;
mod crash;
mod deploy;
mod discovery;
mod exchange;
mod federation;
mod ha;
mod jose;
mod kinds;
mod limits;
mod listeners;
mod monitoring;
mod netns;
mod openbao;
mod push;
mod rotation;
mod run;
mod store;
mod transit;
mod transit_record;
mod validate;
