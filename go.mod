module github.com/gondolin/gondolin

go 1.26
