package verify

import (
	"bytes"
	"io"
	"io/fs"
)

type fsFile = io.ReadCloser

type dirFS struct{ fs.FS }

func (d dirFS) Open(name string) (fsFile, error) { return d.FS.Open(name) }

type bytesReaderAt []byte

func (b bytesReaderAt) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(b).ReadAt(p, off)
}

func readAll(fsys fsReader, name string) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// OpenFunc adapts a function (e.g. reading objects from Cloud Storage) to
// what FS reads.
type OpenFunc func(name string) (io.ReadCloser, error)

// Open implements the reader FS needs.
func (f OpenFunc) Open(name string) (fsFile, error) { return f(name) }
