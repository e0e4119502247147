//! A deterministic fake model implementing `cordial_engine::ModelExecutor` (engine helper writes it).
