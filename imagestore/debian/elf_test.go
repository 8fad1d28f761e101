package debian

import "github.com/gondolin/gondolin/imagestore/internal/format/elftest"

type elfSection = elftest.Section

var (
	testELF = elftest.ELF
	elfNote = elftest.Note
)

const xenElfnotePhys32Entry = elftest.XenPVHNote

// testModule builds a kernel module whose .modinfo has the given fields.
func testModule(fields ...string) []byte {
	var info []byte
	for _, f := range fields {
		info = append(append(info, f...), 0)
	}
	return testELF(nil, elfSection{Name: ".modinfo", Type: 1, Data: info})
}
