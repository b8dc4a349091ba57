"""Pure domain rules: vocabularies, NEWS2, NHS numbers, priority. No I/O here."""
