package viewtable

import "fmt"

// Buffered is the size of the values in the open row group: a caller that
// keeps many tables open at once (one per partition) bounds their sum by
// flushing the largest.
func (w *Writer) Buffered() int64 { return w.buffered }

// Flush ends the open row group now.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	if w.closed || w.buffered == 0 {
		return nil
	}
	if err := w.pw.Flush(); err != nil {
		w.err = fmt.Errorf("viewtable: view %q: flush row group: %w", w.view.Name, err)
		return w.err
	}
	w.buffered = 0
	return nil
}
