baseCommand: echo
class: CommandLineTool
cwlVersion: v1.0
inputs:
  some_string:
    inputBinding:
      position: 0
    type: string
outputs: {}
