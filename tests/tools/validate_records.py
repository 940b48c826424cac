#!/usr/bin/env python3
"""Reads files Tandem wrote with parsers that are not Tandem's: vobject for vCard, icalendar
for iCalendar, the csv module for CSV. Prints one line per file and exits non-zero when one
cannot be read, naming it and why.

Usage: validate_records.py FILE...
"""
import csv
import sys


def check_vcard(path):
    import vobject

    with open(path, encoding="utf-8") as f:
        text = f.read()
    cards = list(vobject.readComponents(text))
    for card in cards:
        if card.name != "VCARD":
            raise ValueError(f"a {card.name} where a VCARD was expected")
        card.fn.value  # every card Tandem writes has a formatted name
    return f"{len(cards)} cards"


def check_ical(path):
    import icalendar

    with open(path, "rb") as f:
        cal = icalendar.Calendar.from_ical(f.read())
    items = [c for c in cal.walk() if c.name in ("VEVENT", "VTODO")]
    for c in items:
        if "UID" not in c:
            raise ValueError(f"a {c.name} without a UID")
        for prop in ("DTSTART", "DTEND", "DUE", "RECURRENCE-ID"):
            if prop in c:
                c.decoded(prop)
        for ex in c.get("EXDATE", []) if isinstance(c.get("EXDATE"), list) else [c.get("EXDATE")] if "EXDATE" in c else []:
            ex.dts
    return f"{len(items)} components"


def check_csv(path):
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return "empty"
    width = len(rows[0])
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise ValueError(f"row {i} has {len(row)} cells, the header {width}")
    return f"{len(rows) - 1} rows"


def main():
    failed = False
    for path in sys.argv[1:]:
        lower = path.lower()
        try:
            if lower.endswith(".vcf"):
                what = check_vcard(path)
            elif lower.endswith(".ics"):
                what = check_ical(path)
            elif lower.endswith(".csv"):
                what = check_csv(path)
            else:
                what = "not a record file; not checked"
            print(f"ok {path}: {what}")
        except Exception as e:  # noqa: BLE001 - any failure of the parser is the finding
            failed = True
            print(f"FAILED {path}: {type(e).__name__}: {e}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
