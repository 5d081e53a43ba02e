// A Flight client in Go, run by tests/python/test_flight.py against the shmarrow bridge.
//
//	interop get ADDRESS       GetFlightInfo(["stream"]), then DoGet of its endpoint's ticket
//	interop put ADDRESS N     DoPut(["stream"]) of N generated batches
//
// Both print one line of JSON: rows, batches and the per-column checksums of docs/protocol.md
// ("Column checksums") of what was read or written, for the test to compare with local consumers.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/flight"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const rowsPerBatch = 100

// summary accumulates what docs/protocol.md calls the column checksums.
type summary struct {
	schema    *arrow.Schema
	rows      int64
	batches   int64
	checksums []uint64
}

const nullHash = 0x9E3779B97F4A7C15

func fnv1a(bytes []byte) uint64 {
	h := uint64(0xcbf29ce484222325)
	for _, b := range bytes {
		h = (h ^ uint64(b)) * 0x100000001b3
	}
	return h
}

func (s *summary) add(batch arrow.Record) {
	if s.checksums == nil {
		s.checksums = make([]uint64, len(s.schema.Fields()))
	}
	var word [8]byte
	for c, column := range batch.Columns() {
		for i := 0; i < column.Len(); i++ {
			e := uint64(nullHash)
			if column.IsValid(i) {
				switch values := column.(type) {
				case *array.Int64:
					binary.LittleEndian.PutUint64(word[:], uint64(values.Value(i)))
					e = fnv1a(word[:])
				case *array.Float64:
					binary.LittleEndian.PutUint64(word[:], math.Float64bits(values.Value(i)))
					e = fnv1a(word[:])
				case *array.String:
					e = fnv1a([]byte(values.Value(i)))
				default:
					fail(fmt.Errorf("column %q: type %s has no checksum here", s.schema.Field(c).Name, column.DataType()))
				}
			}
			s.checksums[c] += e * uint64(2*(s.rows+int64(i))+1)
		}
	}
	s.rows += batch.NumRows()
	s.batches++
}

func (s *summary) print() {
	columns := []map[string]string{}
	for c, field := range s.schema.Fields() {
		columns = append(columns, map[string]string{
			"name": field.Name, "type": field.Type.String(), "checksum": fmt.Sprintf("%016x", s.checksums[c])})
	}
	out, _ := json.Marshal(map[string]any{"rows": s.rows, "batches": s.batches, "columns": columns})
	fmt.Println(string(out))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "interop:", err)
	os.Exit(1)
}

func connect(address string) flight.Client {
	target, found := strings.CutPrefix(address, "grpc://")
	if !found {
		fail(fmt.Errorf("address %q: only grpc:// is tested", address))
	}
	client, err := flight.NewClientWithMiddleware(target, nil, nil,
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail(err)
	}
	return client
}

var descriptor = &flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{"stream"}}

func get(ctx context.Context, client flight.Client) {
	info, err := client.GetFlightInfo(ctx, descriptor)
	if err != nil {
		fail(fmt.Errorf("GetFlightInfo: %w", err))
	}
	if len(info.Endpoint) != 1 {
		fail(fmt.Errorf("GetFlightInfo: %d endpoints, want 1", len(info.Endpoint)))
	}
	stream, err := client.DoGet(ctx, info.Endpoint[0].Ticket)
	if err != nil {
		fail(fmt.Errorf("DoGet: %w", err))
	}
	reader, err := flight.NewRecordReader(stream)
	if err != nil {
		fail(fmt.Errorf("DoGet: %w", err))
	}
	defer reader.Release()
	s := summary{schema: reader.Schema()}
	for reader.Next() {
		s.add(reader.Record())
	}
	if err := reader.Err(); err != nil {
		fail(fmt.Errorf("DoGet after %d batches: %w", s.batches, err))
	}
	s.print()
}

func put(ctx context.Context, client flight.Client, batches int) {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "name", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "x", Type: arrow.PrimitiveTypes.Float64},
	}, nil)
	stream, err := client.DoPut(ctx)
	if err != nil {
		fail(fmt.Errorf("DoPut: %w", err))
	}
	writer := flight.NewRecordWriter(stream, ipc.WithSchema(schema))
	writer.SetFlightDescriptor(descriptor)
	s := summary{schema: schema}
	builder := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer builder.Release()
	for b := 0; b < batches; b++ {
		for i := 0; i < rowsPerBatch; i++ {
			row := int64(b*rowsPerBatch + i)
			builder.Field(0).(*array.Int64Builder).Append(row)
			if row%7 == 0 {
				builder.Field(1).(*array.StringBuilder).AppendNull()
			} else {
				builder.Field(1).(*array.StringBuilder).Append("go-" + strconv.FormatInt(row, 10))
			}
			builder.Field(2).(*array.Float64Builder).Append(float64(row) / 4)
		}
		batch := builder.NewRecord()
		s.add(batch)
		if err := writer.Write(batch); err != nil {
			fail(fmt.Errorf("DoPut batch %d: %w", b, err))
		}
		batch.Release()
	}
	if err := writer.Close(); err != nil {
		fail(fmt.Errorf("DoPut: closing: %w", err))
	}
	if err := stream.CloseSend(); err != nil {
		fail(fmt.Errorf("DoPut: CloseSend: %w", err))
	}
	// The server's answer (or error) comes once it has published every batch.
	for {
		if _, err := stream.Recv(); err != nil {
			if err != io.EOF {
				fail(fmt.Errorf("DoPut: %w", err))
			}
			break
		}
	}
	s.print()
}

func main() {
	if len(os.Args) < 3 {
		fail(fmt.Errorf("usage: interop get ADDRESS | interop put ADDRESS BATCHES"))
	}
	client := connect(os.Args[2])
	defer client.Close()
	ctx := context.Background()
	switch os.Args[1] {
	case "get":
		get(ctx, client)
	case "put":
		if len(os.Args) != 4 {
			fail(fmt.Errorf("usage: interop put ADDRESS BATCHES"))
		}
		batches, err := strconv.Atoi(os.Args[3])
		if err != nil {
			fail(err)
		}
		put(ctx, client, batches)
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[1]))
	}
}
