//! vcard text ⇄ universal records (work in progress).
