//! The data plane: a user's request from accept to answer, in the order it
//! travels. `server` accepts and keeps connections (`server::conn` serves each
//! and parks it while idle, with `server::idle`'s deadlines); `forward` loads the routing snapshot once (`routing`), rewrites
//! `headers`, waits within `deadline`, and sends it through the slot's pool
//! (`upstream`: our HTTP/1.1 client, its request body and response parser);
//! `body` streams the answer back, `outcome` says how each attempt and
//! request ended and who caused a failure, and `traffic` records it, which
//! the control plane and operations read. `https` holds what TLS changes on
//! the way (the scheme, the redirect, HSTS).

pub mod body;
pub mod deadline;
pub mod forward;
pub mod headers;
pub mod https;
pub mod outcome;
pub mod pool;
pub mod routing;
pub mod server;
pub mod tally;
pub mod traffic;
pub mod upstream;
