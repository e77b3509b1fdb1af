"""Sources turn raw dataset files into records; they never see tokenizers or token ids."""
