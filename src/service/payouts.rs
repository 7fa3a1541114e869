//! `GET /payouts/{id}` (built in the payouts issue).
