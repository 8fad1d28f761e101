// Package elftest makes tiny ELF files for tests: Go can read ELF but not
// write it.
package elftest

import (
	"bytes"
	"encoding/binary"
)

// Section is a section to put into a test ELF.
type Section struct {
	Name string
	Type uint32
	Data []byte
}

// ELF builds an x86-64 ELF64 file with the given sections and, when
// note is not nil, one PT_NOTE segment holding it.
func ELF(note []byte, sections ...Section) []byte {
	le := binary.LittleEndian
	const ehsize, phsize, shsize = 64, 56, 64
	var body bytes.Buffer
	phnum := 0
	if note != nil {
		phnum = 1
	}
	dataStart := ehsize + phsize*phnum
	// Section contents, then the name table.
	shstr := []byte{0}
	type placed struct {
		nameOff, off, size int
		typ                uint32
	}
	var secs []placed
	noteOff := dataStart
	body.Write(note)
	for _, s := range sections {
		secs = append(secs, placed{len(shstr), dataStart + body.Len(), len(s.Data), s.Type})
		shstr = append(append(shstr, s.Name...), 0)
		body.Write(s.Data)
	}
	shstrNameOff := len(shstr)
	shstr = append(append(shstr, ".shstrtab"...), 0)
	secs = append(secs, placed{shstrNameOff, dataStart + body.Len(), len(shstr), 3})
	body.Write(shstr)
	for body.Len()%8 != 0 {
		body.WriteByte(0)
	}
	shoff := dataStart + body.Len()

	out := make([]byte, ehsize+phsize*phnum)
	copy(out, "\x7fELF\x02\x01\x01")
	le.PutUint16(out[16:], 2)  // ET_EXEC
	le.PutUint16(out[18:], 62) // EM_X86_64
	le.PutUint32(out[20:], 1)
	if phnum > 0 {
		le.PutUint64(out[32:], ehsize)
	}
	le.PutUint64(out[40:], uint64(shoff))
	le.PutUint16(out[52:], ehsize)
	le.PutUint16(out[54:], phsize)
	le.PutUint16(out[56:], uint16(phnum))
	le.PutUint16(out[58:], shsize)
	le.PutUint16(out[60:], uint16(len(secs)+1))
	le.PutUint16(out[62:], uint16(len(secs))) // shstrndx: the last one
	if phnum > 0 {
		ph := out[ehsize:]
		le.PutUint32(ph[0:], 4) // PT_NOTE
		le.PutUint64(ph[8:], uint64(noteOff))
		le.PutUint64(ph[32:], uint64(len(note)))
		le.PutUint64(ph[40:], uint64(len(note)))
		le.PutUint64(ph[48:], 4)
	}
	out = append(out, body.Bytes()...)
	out = append(out, make([]byte, shsize)...) // null section
	for _, s := range secs {
		sh := make([]byte, shsize)
		le.PutUint32(sh[0:], uint32(s.nameOff))
		le.PutUint32(sh[4:], s.typ)
		le.PutUint64(sh[24:], uint64(s.off))
		le.PutUint64(sh[32:], uint64(s.size))
		le.PutUint64(sh[48:], 1)
		out = append(out, sh...)
	}
	return out
}

// Note encodes one ELF note.
func Note(owner string, typ uint32, desc []byte) []byte {
	le := binary.LittleEndian
	pad := func(b []byte) []byte {
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	var b []byte
	b = le.AppendUint32(b, uint32(len(owner)+1))
	b = le.AppendUint32(b, uint32(len(desc)))
	b = le.AppendUint32(b, typ)
	b = append(b, pad(append([]byte(owner), 0))...)
	b = append(b, pad(desc)...)
	return b
}

// XenPVHNote is the note type that marks a PVH entry point.
const XenPVHNote = 18
