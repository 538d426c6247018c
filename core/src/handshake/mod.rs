//! sans-IO server negotiation
