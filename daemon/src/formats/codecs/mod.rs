//! The record codecs: vCard, CSV contacts and iCalendar text ⇄ universal records. Pure (no
//! I/O); the record formats around them read and write the files.

pub mod csv;
pub mod ical;
pub mod vcard;
