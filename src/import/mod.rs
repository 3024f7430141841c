//! Importers (CDNOW, JSON lines).
