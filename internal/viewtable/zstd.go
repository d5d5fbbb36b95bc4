package viewtable

import (
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/parquet-go/parquet-go/format"
)

// codec is zstd with a 1 MiB window, as internal/lake uses: pages are
// compressed one at a time (256 KiB of values), so the library's 8 MiB
// default window buys nothing and costs 16 MiB of history per pooled encoder.
// Only Encode is used by a writer; Decode serves tests reading files back.
type codec struct {
	encoders sync.Pool
	once     sync.Once
	decoder  *zstd.Decoder
}

var zstdCodec = &codec{}

func (c *codec) String() string                            { return "ZSTD" }
func (c *codec) CompressionCodec() format.CompressionCodec { return format.Zstd }

func (c *codec) Encode(dst, src []byte) ([]byte, error) {
	e, _ := c.encoders.Get().(*zstd.Encoder)
	if e == nil {
		var err error
		e, err = zstd.NewWriter(nil,
			zstd.WithEncoderConcurrency(1),
			zstd.WithWindowSize(1<<20),
			zstd.WithEncoderLevel(zstd.SpeedDefault),
			zstd.WithZeroFrames(true),
			zstd.WithEncoderCRC(false),
		)
		if err != nil {
			return dst, err
		}
	}
	defer c.encoders.Put(e)
	return e.EncodeAll(src, dst[:0]), nil
}

func (c *codec) Decode(dst, src []byte) ([]byte, error) {
	c.once.Do(func() { c.decoder, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0)) })
	return c.decoder.DecodeAll(src, dst[:0])
}
