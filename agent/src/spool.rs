//! Placeholder: the durable on-disk spool (issue 4) lands here.
