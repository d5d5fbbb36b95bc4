//go:build !unix

package main

import (
	"io"
	"os"
	"strconv"
)

// terminalWidth is $COLUMNS, or 80 when unset.
func terminalWidth(io.Writer) int {
	if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n > 0 {
		return n
	}
	return 80
}
