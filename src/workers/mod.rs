//! The background workers: the relay that publishes events to NATS JetStream, and the mailer
//! that sends the mails those events call for. The projector runner is in `startup`.

pub mod mailer;
pub mod relay;
