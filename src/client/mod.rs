//! Blocking device and provider clients over std::net.
