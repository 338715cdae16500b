//! Healing (being written).
