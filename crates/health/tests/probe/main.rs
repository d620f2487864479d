//! Probes against real targets on loopback: an axum server, TCP listeners,
//! a tonic health server, Mosquitto brokers and real processes. Nothing is
//! mocked; each module starts what it probes on port 0 (or a free port).

mod exec;
mod grpc;
mod guard;
mod http;
mod mqtt;
mod support;
mod tcp;
mod tls;
