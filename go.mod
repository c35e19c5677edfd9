module github.com/unionmount/unionmount

go 1.26
