package workflows

import (
	"fmt"
	"slices"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/humanize"
)

// PhaseAttachments: the run's attachments are being fetched (issue 15).
const PhaseAttachments = "attachments"

// attachmentsOn reports whether this export fetches attachments.
func (r *exportRun) attachmentsOn() bool {
	p := r.set.Layout.Attachments
	return p != nil && (p.Mode == activities.AttachmentsFetch || p.Mode == activities.AttachmentsInline)
}

// fetchAttachments runs FetchAttachments once per chunk, after every file
// is staged: each reads its chunk's record and the references its
// downloads listed, and stages the documents. One chunk at a time, so the
// run's byte budget is exact; within a chunk the activity fetches in
// parallel through the server's download limiter. Progress is carried in
// ResumeState, so a continue-as-new resumes at the next chunk. Only
// exports with attachments take this path (and its patch marker).
func (r *exportRun) fetchAttachments() error {
	if !r.attachmentsOn() || workflow.GetVersion(r.ctx, versionAttachments, workflow.DefaultVersion, 1) < 1 {
		return nil
	}
	st, pol := r.st, *r.set.Layout.Attachments
	chunks := r.set.chunks(st.Plan.Files)
	for st.AttachmentChunks < chunks {
		r.setPhase(PhaseAttachments, fmt.Sprintf("**Fetching attachments** of chunk %d of %d: %s stored so far (%s)",
			st.AttachmentChunks+1, chunks, humanize.Count(st.Attachments.ByStatus[activities.AttachmentStored]), humanize.Bytes(st.Attachments.Bytes)))
		budget := int64(-1)
		if pol.MaxTotal > 0 {
			budget = max(0, pol.MaxTotal-st.Attachments.Bytes)
		}
		in := activities.FetchAttachmentsInput{ServerRef: r.ref, Target: r.target, Chunk: st.AttachmentChunks, PlanVersion: st.PlanVersion,
			Policy: pol, Budget: budget, Concurrency: r.set.Concurrency}
		var res activities.FetchAttachmentsResult
		actx := workflow.WithActivityOptions(r.ctx, workflow.ActivityOptions{
			StartToCloseTimeout: 24 * time.Hour, HeartbeatTimeout: r.set.HeartbeatTimeout,
			DisableEagerExecution: true, // spread over the fleet, as downloads are (workflows/chunk.go)
			RetryPolicy: &temporal.RetryPolicy{InitialInterval: 5 * time.Second, BackoffCoefficient: 2, MaximumInterval: 5 * time.Minute,
				MaximumAttempts: int32(max(1, r.set.MaxFileAttempts)), NonRetryableErrorTypes: activities.NonRetryable},
			Summary: fmt.Sprintf("attachments of chunk %d of %d", st.AttachmentChunks+1, chunks)})
		if err := workflow.ExecuteActivity(actx, a.FetchAttachments, in).Get(r.ctx, &res); err != nil {
			return fmt.Errorf("fetch attachments: %w", err)
		}
		st.Attachments.Add(res.Counts)
		st.AttachmentChunks++
		if st.AttachmentChunks < chunks && r.historyIsLong() {
			return r.continueAsNew()
		}
	}
	if n := st.Attachments.Failed(); n > 0 {
		msg := fmt.Sprintf("%d attachment(s) were not stored (%v); attachments/index.ndjson lists each with its resource and reason", n, st.Attachments.ByStatus)
		if r.set.Layout.Strict {
			return temporal.NewNonRetryableApplicationError("strict: "+msg, "AttachmentsIncomplete", nil)
		}
		if !slices.Contains(st.Warnings, msg) {
			st.Warnings = append(st.Warnings, msg)
		}
	}
	return nil
}
