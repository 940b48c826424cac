//! ical text ⇄ universal records (work in progress).
