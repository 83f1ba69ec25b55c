//! The credential core: the model, the secret wrapper, hashing, and the cached index that
//! decides every login.

pub mod accounts;
pub mod hashing;
pub mod index;
pub mod keys;
pub mod model;
pub mod secret;
pub mod tickets;

pub use index::{AuthError, CredentialIndex, Grant};
pub use model::{Credentials, IdentityError, Login, Origin, Protocol, Service};
pub use secret::Secret;
