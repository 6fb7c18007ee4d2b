"""Training: the loop (fit), one optimizer step, the losses on the fused head, AdamW and its
schedule, the resumable training checkpoint, and what a run sets up before its first step (data,
model, batches on the device)."""
