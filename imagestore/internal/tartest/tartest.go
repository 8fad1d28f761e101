// Package tartest makes sparse tar archives for tests: Go's archive/tar
// reads every sparse format GNU tar writes but writes none of them, and
// a layer from a stranger may use any.
package tartest

import (
	"bytes"
	"fmt"
	"strconv"
)

// SparseFormat is one of the ways GNU tar records a sparse file.
type SparseFormat int

const (
	// GNU is the old GNU format: type 'S', the map in the header.
	GNU SparseFormat = iota
	// PAX00 is GNU's PAX format 0.0: GNU.sparse.offset and
	// GNU.sparse.numbytes records, one pair per fragment.
	PAX00
	// PAX01 is GNU's PAX format 0.1: the map in a GNU.sparse.map record.
	PAX01
	// PAX10 is GNU's PAX format 1.0: the map at the start of the data.
	PAX10
)

// SparseFormats lists every format, for table tests.
var SparseFormats = []SparseFormat{GNU, PAX00, PAX01, PAX10}

func (f SparseFormat) String() string {
	switch f {
	case GNU:
		return "GNU"
	case PAX00:
		return "PAX 0.0"
	case PAX01:
		return "PAX 0.1"
	case PAX10:
		return "PAX 1.0"
	}
	return "SparseFormat(" + strconv.Itoa(int(f)) + ")"
}

const block = 512

// Sparse returns a whole tar archive holding one sparse regular file
// called name of apparent size size: data at offset 0, a hole after it.
// The archive is a few blocks whatever size is.
func Sparse(f SparseFormat, name string, size int64, data string) []byte {
	if int64(len(data)) > size {
		panic("tartest: data longer than the file")
	}
	var out bytes.Buffer
	frag := fmt.Sprintf("%d,%d", 0, len(data))
	stored := data
	switch f {
	case GNU:
		h := header(name, '0', int64(len(data)))
		h[156] = 'S'
		// GNU magic and version instead of POSIX ustar's.
		copy(h[257:265], "ustar  \x00")
		octal(h[386:398], 0)                // sparse[0].offset
		octal(h[398:410], int64(len(data))) // sparse[0].numbytes
		numeric(h[483:495], size)           // realsize
		out.Write(checksum(h))
		writeData(&out, stored)
		return finish(&out)
	case PAX00:
		writePAX(&out, name, [][2]string{
			{"GNU.sparse.size", strconv.FormatInt(size, 10)},
			{"GNU.sparse.numblocks", "1"},
			{"GNU.sparse.offset", "0"},
			{"GNU.sparse.numbytes", strconv.Itoa(len(data))},
		})
	case PAX01:
		writePAX(&out, name, [][2]string{
			{"GNU.sparse.size", strconv.FormatInt(size, 10)},
			{"GNU.sparse.numblocks", "1"},
			{"GNU.sparse.map", frag},
		})
	case PAX10:
		writePAX(&out, name, [][2]string{
			{"GNU.sparse.major", "1"},
			{"GNU.sparse.minor", "0"},
			{"GNU.sparse.name", name},
			{"GNU.sparse.realsize", strconv.FormatInt(size, 10)},
		})
		m := fmt.Sprintf("1\n0\n%d\n", len(data))
		stored = m + string(make([]byte, pad(len(m)))) + data
	default:
		panic("tartest: unknown sparse format")
	}
	out.Write(checksum(header(name, '0', int64(len(stored)))))
	writeData(&out, stored)
	return finish(&out)
}

// writePAX writes a PAX extended header entry with records in order
// (format 0.0 depends on the order of its offset and numbytes pairs).
func writePAX(out *bytes.Buffer, name string, records [][2]string) {
	var body bytes.Buffer
	for _, r := range records {
		rec := " " + r[0] + "=" + r[1] + "\n"
		// The length prefix counts its own digits.
		n := len(rec) + 1
		for len(strconv.Itoa(n))+len(rec) != n {
			n++
		}
		body.WriteString(strconv.Itoa(n) + rec)
	}
	out.Write(checksum(header("PaxHeaders/"+name, 'x', int64(body.Len()))))
	writeData(out, body.String())
}

// header is a ustar header block without its checksum.
func header(name string, typ byte, size int64) []byte {
	h := make([]byte, block)
	copy(h[0:100], name)
	octal(h[100:108], 0o644)
	octal(h[108:116], 0)
	octal(h[116:124], 0)
	octal(h[124:136], size)
	octal(h[136:148], 0)
	h[156] = typ
	copy(h[257:265], "ustar\x0000")
	return h
}

func checksum(h []byte) []byte {
	copy(h[148:156], "        ")
	var sum int64
	for _, b := range h {
		sum += int64(b)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

func octal(field []byte, n int64) {
	copy(field, fmt.Sprintf("%0*o\x00", len(field)-1, n))
}

// numeric writes n in octal when it fits, else in GNU's base-256 form,
// which sizes of 8 GiB and more need.
func numeric(field []byte, n int64) {
	if s := strconv.FormatInt(n, 8); len(s) < len(field) {
		octal(field, n)
		return
	}
	clear(field)
	for i := len(field) - 1; i > 0 && n > 0; i-- {
		field[i] = byte(n)
		n >>= 8
	}
	field[0] |= 0x80
}

func pad(n int) int { return (block - n%block) % block }

func writeData(out *bytes.Buffer, data string) {
	out.WriteString(data)
	out.Write(make([]byte, pad(len(data))))
}

// finish writes the two zero blocks that end an archive.
func finish(out *bytes.Buffer) []byte {
	out.Write(make([]byte, 2*block))
	return out.Bytes()
}
