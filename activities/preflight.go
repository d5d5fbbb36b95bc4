package activities

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"syscall"

	"github.com/bulkflow/bulkflow/internal/sink"
)

// CheckTargetInput names what an export is about to use.
type CheckTargetInput struct {
	ServerRef
	Target
	// Views are the export's views (names or inline definitions): they are
	// validated and their definitions staged for the downloads (views.go).
	Views []string `json:"views,omitempty"`
}

// CheckTarget checks, before the server does hours of work, what can be
// checked without it (issue 12 §3): the server's credentials resolve on
// this worker, the output location takes a write, and the run folder is not
// committed already (the export would download everything, then fail at
// commit). Each failure is permanent and says what to change.
func (a *Activities) CheckTarget(ctx context.Context, in CheckTargetInput) error {
	var staged []stagedView
	if len(in.Views) > 0 {
		var err error
		if staged, err = a.resolveViews(in.Views); err != nil {
			return err
		}
	}
	if _, err := a.client(in.ServerRef); err != nil {
		return err
	}
	s, err := a.sinkFor(in.Output)
	if err != nil {
		return err
	}
	if err := s.Commit(ctx, in.Run, nil); err == nil {
		return permanent("RunCommitted", fmt.Errorf("the run folder %s is already committed (it has %s): this export would download everything and then fail at commit; start it under another workflow ID or \"run\" name, or move that folder away first",
			s.Location(in.Run), sink.ManifestName))
	} else if !errors.Is(err, sink.ErrNotFound) {
		return retryable("Sink", fmt.Errorf("check the run folder %s: %w", s.Location(in.Run), err))
	}
	w, err := s.Create(ctx, in.Run, sink.WorkPrefix+"preflight")
	if err == nil {
		if _, err = w.Write([]byte("ok\n")); err == nil {
			err = w.Close()
		} else {
			w.Abort()
		}
	}
	if err != nil {
		err = fmt.Errorf("the output location %s does not take a write: %w; fix the worker's -output root or the export's \"output\"", s.Location(in.Run), err)
		// Permissions, a read-only file system or a file where a folder
		// should be do not pass by themselves; anything else may.
		if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.ENOTDIR) {
			return permanent("Config", err)
		}
		return retryable("Sink", err)
	}
	if staged != nil {
		if err := writeJSON(ctx, s, in.Run, viewsObject, staged); err != nil {
			return retryable("Sink", fmt.Errorf("stage the views of run %s: %w", in.Run, err))
		}
	}
	return nil
}
