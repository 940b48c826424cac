//! csv text ⇄ universal records (work in progress).
