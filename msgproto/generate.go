package msgproto

//go:generate go run ./internal/cgen -o mpproto.h -go messages_gen.go -dump testdata/ctest/mpdump.h
