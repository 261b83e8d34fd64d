"""Coursework: labs that teach one truth each, questions answered from the student's wire.

One module per concept:

- `kalab.course.query`: the small query language that names one value of a
  run's report (``request[3].connection.client_port``);
- `kalab.course.questions`: a question (text, query, answer type, points)
  and how an answer is checked against the value the wire gives;
- `kalab.course.lab`: a lab file (a scenario with its teaching material,
  parameters drawn per student, and questions);
- `kalab.course.worksheet`: the student's worksheet and the key, made from a run;
- `kalab.course.grade`: one student's answers graded against their run,
  re-analysed from its pcaps; `kalab.course.classroom`: a whole class;
  `kalab.course.gradescope`: Gradescope's results.json and autograder.
"""
