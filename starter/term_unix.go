//go:build unix

package main

import (
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// terminalWidth is the width of the terminal w writes to; $COLUMNS, then
// 80 when it is unknown.
func terminalWidth(w io.Writer) int {
	if f, ok := w.(*os.File); ok {
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 {
			return int(ws.Col)
		}
	}
	if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n > 0 {
		return n
	}
	return 80
}
