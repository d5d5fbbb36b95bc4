package workflows

// Change IDs of workflow.GetVersion patches (docs/versioning.md). A change
// that alters the commands a workflow issues for the same history is
// guarded by one of these, so exports started on older code replay and
// finish on newer code. Keep each ID for as long as runs started before it
// may exist (the replay corpus in testdata holds their histories).
const (
	// Version 1: chunk workflow IDs carry the parent run's identity.
	versionChunkIDRun = "chunk-id-with-run"
	// Version 1: the server's job is deleted once its files are staged,
	// before the commit (version 0: after the commit).
	versionDeleteBeforeCommit = "delete-job-before-commit"
	// Version 1 (DownloadChunkWorkflow): cancelled downloads are waited for
	// (WaitForCancellation) before the chunk ends.
	versionWaitDownloadCancel = "wait-download-cancellation"
	// Version 1: kick-off and status retries are driven by the workflow
	// (one attempt per activity, durable timers between them), so the
	// progress query shows them and a deadline bounds them.
	versionWorkflowRetries = "workflow-driven-retries"
	// Version 1: a job abandoned by a restart is DELETEd (best effort).
	versionDeleteAbandonedJob = "delete-abandoned-job"
	// Version 1: a new export checks its credentials, output location and
	// run folder (CheckTarget) before the kick-off.
	versionCheckTarget = "check-target"
	// Version 1: up to Settings.ParallelChunks chunk children run side by
	// side (version 0: one after another).
	versionParallelChunks = "parallel-chunks"
	// Version 1 (DownloadChunkWorkflow): small files share DownloadBatch
	// activities planned from ChunkHints; a file failing in a batch is
	// retried alone through DownloadFile (issue 14 §1).
	versionBatchSmallFiles = "batch-small-files"
	// Version 1: exports with attachments "fetch" run FetchAttachments per
	// chunk after the downloads (only such exports reach this patch).
	versionAttachments = "attachments"
)
